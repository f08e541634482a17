//! Rebuilds the crate when a migration changes: `sqlx::migrate!` embeds the files at compile
//! time, and on stable Rust the macro cannot tell Cargo to watch them itself.

fn main() {
    println!("cargo::rerun-if-changed=../../migrations/sqlite");
    println!("cargo::rerun-if-changed=../../migrations/postgres");
}
