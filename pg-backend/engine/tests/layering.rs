//! The engine names nothing Postgres-specific. The compiler already enforces
//! it (this crate has no Postgres dependency, so `tokio_postgres::…`, `bb8::…`
//! or `crate::pg::…` do not resolve); this test keeps the manifest that way.

const POSTGRES_CRATES: &[&str] = &[
    "tokio-postgres",
    "postgres",
    "bb8",
    "rustls",
    "tokio-postgres-rustls",
    "duropg",
];

#[test]
fn the_manifest_has_no_postgres_dependency() {
    let manifest = include_str!("../Cargo.toml");
    let mut section = "";
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
            continue;
        }
        if !section.contains("dependencies") {
            continue;
        }
        let name = line.split(['=', '.', ' ']).next().unwrap_or("");
        assert!(
            !POSTGRES_CRATES.contains(&name),
            "duropg-engine must not depend on {name} ({section}): the engine names nothing Postgres-specific"
        );
    }
}
