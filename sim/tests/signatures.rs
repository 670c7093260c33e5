//! The simulated server answers `Describe` for each statement of
//! `pg-backend/src/pg/sql.rs` from `sim/src/wire/signatures.txt`: its
//! parameter types and result columns. This test prepares every statement on
//! a real, migrated PostgreSQL and checks the file says exactly what the
//! server says, so the simulated wire cannot drift from the real one.
//! `DUROPG_BLESS=1` rewrites the file.

use duropg::testing::internals::{render, Sql};
use duropg_core::SchemaName;

#[tokio::test]
async fn signatures_match_what_postgres_describes() {
    // A schema of its own per run (dropped at the end), so a schema left
    // behind by another checkout's migrations cannot stand in for ours.
    let test_schema = duropg_tests::TestSchema::new("sim_signatures");
    let schema = test_schema.name();
    let client = duropg_tests::admin().await;
    let provider = test_schema
        .builder()
        .build()
        .await
        .unwrap_or_else(|e| panic!("migrating {schema}: {e}"));
    drop(provider);
    let parsed = SchemaName::parse(schema).expect("schema name");
    let mut lines = Vec::new();
    for (name, template) in Sql::templates() {
        let st = client
            .prepare(&render(template, &parsed))
            .await
            .unwrap_or_else(|e| panic!("prepare {name}: {e}"));
        let params: Vec<String> = st.params().iter().map(|t| t.oid().to_string()).collect();
        let cols: Vec<String> = st
            .columns()
            .iter()
            .map(|c| format!("{}:{}", c.name(), c.type_().oid()))
            .collect();
        lines.push(format!("{name}\t{}\t{}", params.join(","), cols.join(",")));
    }
    let expected = lines.join("\n") + "\n";
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/wire/signatures.txt");
    if std::env::var_os("DUROPG_BLESS").is_some() {
        std::fs::write(path, &expected).expect("write signatures.txt");
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert_eq!(
        committed, expected,
        "sim/src/wire/signatures.txt differs from what PostgreSQL describes; rerun with DUROPG_BLESS=1 and review the diff"
    );
}
