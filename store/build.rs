//! Rebuild the store crate when a migration file is added.
fn main() {
    // sqlx::migrate! embeds migrations at compile time; rebuild when one is added.
    println!("cargo:rerun-if-changed=../migrations");
}
