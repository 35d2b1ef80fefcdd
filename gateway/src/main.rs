//! The `shardgate` binary: the command line is `shardgate::cli` (its grammar in
//! `cli/args.rs`, each command in its own module).

fn main() -> std::process::ExitCode {
    shardgate::cli::main()
}
