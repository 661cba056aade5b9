//! Rebuild when a migration changes: `sqlx::migrate!` embeds the files at compile time, and
//! cargo would not notice a new one otherwise.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
