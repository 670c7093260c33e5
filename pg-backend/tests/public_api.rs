//! duropg's public surface, listed so that changing it is a deliberate edit
//! of this file: every `pub` item declared in `src/lib.rs` (the crate root
//! and its inline modules) and in `src/testing/mod.rs` (the `testing`
//! feature). Methods of the listed types are documented on them; the types
//! of `duropg_engine` and `duropg_core` that are re-exported here are those
//! crates' public API.

/// The public items, as `module::name`.
const EXPECTED: &[&str] = &[
    "Depths",
    "EngineConfig",
    "Estimated",
    "MigrateError",
    "OpsStatus",
    "PgError",
    "PgProvider",
    "PgProviderBuilder",
    "PgStore",
    "PollConfig",
    "ReadmeDoctests",
    "RetryPolicy",
    "SchemaName",
    "SchemaNameError",
    "SslMode",
    "StoreFault",
    "SystemCounts",
    "TokenSource",
    "UuidTokens",
    "DEFAULT_COMPLETION_WINDOW",
    "DEFAULT_SCHEMA",
    "connect",
    "connect::Connected",
    "connect::Connector",
    "connect::plain_connector",
    "connect::spawn_connection",
    "latest_schema_version",
    "metrics",
    "metrics::ALL",
    "metrics::AMBIGUOUS_RESOLVED_TOTAL",
    "metrics::CLAIMS_TOTAL",
    "metrics::LISTENER_CONNECTED",
    "metrics::POOL_CONNECTIONS",
    "metrics::POOL_WAITING",
    "metrics::POOL_WAIT_SECONDS",
    "metrics::RETRIES_EXHAUSTED_TOTAL",
    "metrics::RETRIES_TOTAL",
    "metrics::WAKEUPS_RECEIVED_TOTAL",
    "metrics::WAKEUPS_SENT_TOTAL",
    "testing",
    "testing::FaultConfig",
    "testing::FaultCounts",
    "testing::FaultyPgProvider",
    "testing::FaultyStore",
    "testing::LOCAL_URL",
    "testing::cluster",
    "testing::database_url",
    "testing::internals",
    "testing::internals::MIGRATIONS",
    "testing::internals::Migration",
    "testing::internals::SYSTEM_METRICS_EXACT_BELOW",
    "testing::internals::Sql",
    "testing::internals::TABLES",
    "testing::internals::checksum",
    "testing::internals::fault",
    "testing::internals::render",
    "testing::internals::system_roots",
    "testing::try_database_url",
];

/// The names a `pub` declaration introduces (`pub use a::{B, C}` gives B, C).
fn declared(decl: &str) -> Vec<String> {
    let decl = decl.trim_start_matches("pub ").trim_end_matches([';', '{', ' ']);
    let mut words = decl.splitn(2, ' ');
    let (kind, rest) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if kind != "use" {
        let name = rest.split(['(', '<', ':', ' ', '=']).next().unwrap_or("");
        return vec![name.to_string()];
    }
    let list = match rest.find('{') {
        Some(open) => &rest[open + 1..rest.rfind('}').unwrap_or(rest.len())],
        None => rest.rsplit("::").next().unwrap_or(rest),
    };
    list.split(',')
        .map(|item| item.trim().rsplit(" as ").next().unwrap_or("").to_string())
        .filter(|name| !name.is_empty())
        .collect()
}

/// Every public item of a source file, prefixed by `prefix` and the inline
/// modules it is declared in.
fn public_items(source: &str, prefix: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut module: Option<String> = None;
    let mut pending = String::new();
    let mut first_indent = 0;
    for line in source.lines() {
        let indent = line.len() - line.trim_start().len();
        let text = line.trim();
        if indent == 0 && text == "}" {
            module = None;
        }
        if pending.is_empty() && !(text.starts_with("pub ") && (indent == 0 || (indent == 4 && module.is_some()))) {
            continue;
        }
        if pending.is_empty() {
            first_indent = indent;
        }
        pending.push_str(text);
        pending.push(' ');
        let complete = text.ends_with(';') || (text.ends_with('{') && !pending.starts_with("pub use"));
        if !complete {
            continue;
        }
        let scope = match (&module, first_indent) {
            (Some(m), 4) => format!("{prefix}{m}::"),
            _ => prefix.to_string(),
        };
        let decl = std::mem::take(&mut pending);
        for name in declared(decl.trim()) {
            items.push(format!("{scope}{name}"));
        }
        if first_indent == 0 && decl.starts_with("pub mod ") && decl.trim_end().ends_with('{') {
            module = declared(decl.trim()).pop();
        }
    }
    items
}

#[test]
fn the_public_api_is_the_listed_one() {
    let mut found = public_items(include_str!("../src/lib.rs"), "");
    found.extend(public_items(include_str!("../src/testing/mod.rs"), "testing::"));
    found.sort();
    let mut expected: Vec<String> = EXPECTED.iter().map(|s| s.to_string()).collect();
    expected.sort();
    let added: Vec<_> = found.iter().filter(|i| !expected.contains(i)).collect();
    let removed: Vec<_> = expected.iter().filter(|i| !found.contains(i)).collect();
    assert!(
        added.is_empty() && removed.is_empty(),
        "duropg's public API changed; if that is deliberate, update EXPECTED in this file.\nadded: {added:?}\nremoved: {removed:?}"
    );
}

/// Every listed item resolves (a rename or removal fails to compile here).
#[test]
fn the_listed_items_resolve() {
    use duropg::testing::internals;
    let _ = (
        duropg::DEFAULT_SCHEMA,
        duropg::DEFAULT_COMPLETION_WINDOW,
        duropg::latest_schema_version(),
    );
    let _ = (
        duropg::metrics::ALL,
        duropg::testing::LOCAL_URL,
        internals::TABLES,
        internals::MIGRATIONS,
    );
    let _ = internals::SYSTEM_METRICS_EXACT_BELOW;
    fn named<T: ?Sized>() {}
    named::<duropg::PgProvider>();
    named::<duropg::PgProviderBuilder>();
    named::<duropg::PgError>();
    named::<duropg::SslMode>();
    named::<duropg::MigrateError>();
    named::<duropg::OpsStatus>();
    named::<duropg::connect::Connector>();
    named::<duropg::testing::FaultyPgProvider>();
    named::<duropg::testing::FaultConfig>();
    named::<duropg::testing::cluster::Cluster>();
}
