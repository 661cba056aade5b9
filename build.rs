//! Rebuild when a migration changes: `sqlx::migrate!` embeds the files at compile time, and
//! cargo would not notice a new one otherwise; the same for the dashboard's static files,
//! which `http::web::assets` embeds with `include_bytes!`.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=static");
}
