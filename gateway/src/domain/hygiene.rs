//! Process hygiene at start-up, for every subcommand (`main` calls it before dispatch): no
//! core dumps, and (on Linux) not dumpable, so a crash or a debugger attach by another user
//! cannot copy shards, data keys or PINs out of memory; and a umask under which every file
//! the process creates is private.

/// Disable core dumps (`RLIMIT_CORE = 0`) and, on Linux, mark the process not dumpable
/// (`PR_SET_DUMPABLE = 0`, which also keeps non-root users from ptrace-attaching). Failures
/// are logged, not fatal: a container may forbid one of them.
pub fn harden() {
    use rustix::process::{setrlimit, Resource, Rlimit};
    if let Err(e) = setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    ) {
        tracing::warn!(error = %e, "could not disable core dumps (RLIMIT_CORE)");
    }
    #[cfg(target_os = "linux")]
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        tracing::warn!(error = %e, "could not mark the process not dumpable (PR_SET_DUMPABLE)");
    }
}

/// Set the umask to 0o077: whatever the process creates (the SQLite database and its
/// `-wal`/`-shm` files, a backup, anything a library writes) is at most 0600 (directories
/// 0700), whatever umask the process was started with.
pub fn private_files() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    #[test]
    fn harden_leaves_no_core_dumps_and_not_dumpable() {
        super::harden();
        let limit = rustix::process::getrlimit(rustix::process::Resource::Core);
        assert_eq!((limit.current, limit.maximum), (Some(0), Some(0)));
        #[cfg(target_os = "linux")]
        assert_eq!(
            rustix::process::dumpable_behavior().unwrap(),
            rustix::process::DumpableBehavior::NotDumpable
        );
    }
}
