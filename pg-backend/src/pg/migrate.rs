//! Numbered, embedded SQL migrations, applied at connect.
//!
//! - Each migration is a file `migrations/NNNN_name.sql`, embedded in the
//!   crate, rendered for the tenant schema by [`render`].
//! - They run in one transaction under a transaction-scoped advisory lock
//!   keyed by the schema name, so any number of processes may connect to an
//!   empty schema at once: one migrates, the others wait and then find the
//!   work done.
//! - A ledger table `_duropg_migrations` records version, name and the
//!   SHA-256 of each applied migration's template. A changed checksum, or a
//!   version this binary does not know (a newer duropg migrated the schema),
//!   stops the provider before it touches anything.
//! - When the ledger is already current, nothing is locked and no DDL runs,
//!   so a role with only DML rights can start a provider.

use super::conn::PgConn;
use super::sql::render;
use duropg_core::SchemaName;
use sha2::{Digest, Sha256};
use std::fmt;
use tokio_postgres::types::Type;

/// One migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its number; applied in ascending order.
    pub version: i32,
    /// Short name.
    pub name: &'static str,
    /// SQL template (`{s}` is the schema).
    pub sql: &'static str,
}

/// Every migration this binary knows, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("../../migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "scale_indexes",
        sql: include_str!("../../migrations/0002_scale_indexes.sql"),
    },
    Migration {
        version: 3,
        name: "settled_tokens",
        sql: include_str!("../../migrations/0003_settled_tokens.sql"),
    },
];

/// The newest schema version this binary knows.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// SHA-256 of a migration template, hex.
pub fn checksum(sql: &str) -> String {
    Sha256::digest(sql.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Why migrating failed.
#[derive(Debug)]
pub enum MigrateError {
    /// The schema was migrated by a newer duropg.
    NewerSchema {
        /// Schema.
        schema: String,
        /// Highest version in its ledger.
        found: i32,
        /// Highest version this binary knows.
        known: i32,
    },
    /// An applied migration differs from the one embedded here.
    ChecksumMismatch {
        /// Schema.
        schema: String,
        /// The migration.
        version: i32,
    },
    /// The schema is behind and this provider was told not to migrate.
    Behind {
        /// Schema.
        schema: String,
        /// Its version (0: not created).
        found: i32,
        /// Required version.
        needed: i32,
    },
    /// The database refused (for example: no privilege to create the schema).
    Database {
        /// Schema.
        schema: String,
        /// What was being done.
        step: &'static str,
        /// The error.
        error: tokio_postgres::Error,
    },
}

impl fmt::Display for MigrateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MigrateError::NewerSchema { schema, found, known } => write!(
                f,
                "schema {schema:?} is at version {found}, migrated by a newer duropg; this build knows versions up to {known} and will not touch it"
            ),
            MigrateError::ChecksumMismatch { schema, version } => write!(
                f,
                "schema {schema:?}: migration {version} was applied with different SQL than this build embeds (checksum mismatch)"
            ),
            MigrateError::Behind { schema, found, needed } => write!(
                f,
                "schema {schema:?} is at version {found} but this duropg needs version {needed}; migrations are disabled for this provider, so run them once with a role that owns the schema"
            ),
            MigrateError::Database { schema, step, error } => {
                let detail = match error.as_db_error() {
                    Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
                    None => error.to_string(),
                };
                write!(f, "migrating schema {schema:?} failed while {step}: {detail}")?;
                if error.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
                    write!(f, "; this role may not change the schema: run the migrations once as a role that may create it (see Privileges in docs/operations.md)")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for MigrateError {}

/// FNV-1a, 64 bit: a stable hash for advisory-lock keys.
pub fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The advisory-lock key serializing migrations of one schema.
fn migration_lock_key(schema: &SchemaName) -> i64 {
    i64::from_ne_bytes(stable_hash(&format!("duropg.migrate.{schema}")).to_ne_bytes())
}

const LEDGER: &str = "CREATE TABLE IF NOT EXISTS {s}._duropg_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    applied_by text        NOT NULL DEFAULT CURRENT_USER
)";
const READ_LEDGER: &str = "SELECT version, checksum FROM {s}._duropg_migrations ORDER BY version";
const RECORD: &str = "INSERT INTO {s}._duropg_migrations (version, name, checksum) VALUES ($1, $2, $3)";

/// What a migration run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions applied by this call (empty when the schema was current).
    pub applied: Vec<i32>,
}

/// Check the ledger against this binary's migrations.
/// `Ok(found)`: the highest applied version, all checksums matching.
fn verify(schema: &SchemaName, ledger: &[(i32, String)]) -> Result<i32, MigrateError> {
    let found = ledger.iter().map(|(v, _)| *v).max().unwrap_or(0);
    if found > latest_version() {
        return Err(MigrateError::NewerSchema {
            schema: schema.to_string(),
            found,
            known: latest_version(),
        });
    }
    for (version, sum) in ledger {
        let known = MIGRATIONS.iter().find(|m| m.version == *version);
        if known.is_none_or(|m| checksum(m.sql) != *sum) {
            return Err(MigrateError::ChecksumMismatch {
                schema: schema.to_string(),
                version: *version,
            });
        }
    }
    Ok(found)
}

async fn read_ledger(conn: &PgConn, schema: &SchemaName) -> Result<Option<Vec<(i32, String)>>, tokio_postgres::Error> {
    // Unnamed statements throughout (`query_typed`): no prepared statement
    // is left on a server connection a pooler may hand to another client.
    match conn.client().query_typed(&render(READ_LEDGER, schema), &[]).await {
        Ok(rows) => Ok(Some(
            rows.iter()
                .map(|r| (r.get::<_, i32>(0), r.get::<_, String>(1)))
                .collect(),
        )),
        // undefined_table / invalid_schema_name: nothing migrated yet.
        Err(e) if e.code().is_some_and(|c| c.code() == "42P01" || c.code() == "3F000") => Ok(None),
        Err(e) => Err(e),
    }
}

/// Bring `schema` to the latest version (or, with `allow_ddl == false`,
/// only check that it is there).
///
/// # Errors
/// A [`MigrateError`] naming the schema and what is wrong.
pub async fn migrate(conn: &PgConn, schema: &SchemaName, allow_ddl: bool) -> Result<MigrationReport, MigrateError> {
    let db = |step: &'static str| {
        let schema = schema.to_string();
        move |error| MigrateError::Database { schema, step, error }
    };
    // Fast path: current ledger, no lock, no DDL.
    if let Some(ledger) = read_ledger(conn, schema)
        .await
        .map_err(db("reading the migration ledger"))?
    {
        if verify(schema, &ledger)? == latest_version() {
            return Ok(MigrationReport { applied: vec![] });
        }
    }
    if !allow_ddl {
        let found = match read_ledger(conn, schema)
            .await
            .map_err(db("reading the migration ledger"))?
        {
            Some(ledger) => verify(schema, &ledger)?,
            None => 0,
        };
        return Err(MigrateError::Behind {
            schema: schema.to_string(),
            found,
            needed: latest_version(),
        });
    }
    let client = conn.client();
    client
        .batch_execute("BEGIN")
        .await
        .map_err(db("starting the migration transaction"))?;
    let result = apply_locked(conn, schema).await;
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    let ended = client.batch_execute(end).await;
    let report = result?;
    ended.map_err(db("committing migrations"))?;
    Ok(report)
}

/// Inside the migration transaction: take the schema's advisory lock, then
/// create what is missing.
async fn apply_locked(conn: &PgConn, schema: &SchemaName) -> Result<MigrationReport, MigrateError> {
    let db = |step: &'static str| {
        let schema = schema.to_string();
        move |error| MigrateError::Database { schema, step, error }
    };
    let client = conn.client();
    client
        .query_typed(
            "SELECT pg_catalog.pg_advisory_xact_lock($1)",
            &[(&migration_lock_key(schema), Type::INT8)],
        )
        .await
        .map_err(db("waiting for the migration lock"))?;
    client
        .batch_execute(&render("CREATE SCHEMA IF NOT EXISTS {s}", schema))
        .await
        .map_err(db("creating the schema"))?;
    client
        .batch_execute(&render(LEDGER, schema))
        .await
        .map_err(db("creating the migration ledger"))?;
    let ledger = read_ledger(conn, schema)
        .await
        .map_err(db("reading the migration ledger"))?
        .unwrap_or_default();
    let found = verify(schema, &ledger)?;
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| m.version > found) {
        client
            .batch_execute(&render(m.sql, schema))
            .await
            .map_err(db("applying a migration"))?;
        client
            .query_typed(
                &render(RECORD, schema),
                &[
                    (&m.version, Type::INT4),
                    (&m.name, Type::TEXT),
                    (&checksum(m.sql), Type::TEXT),
                ],
            )
            .await
            .map_err(db("recording a migration"))?;
        tracing::info!(schema = %schema, version = m.version, name = m.name, "applied migration");
        applied.push(m.version);
    }
    Ok(MigrationReport { applied })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_from_one_without_gaps() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i32::try_from(i).unwrap() + 1, "{}", m.name);
        }
    }

    #[test]
    fn version_is_nullable_from_the_first_migration() {
        let first = MIGRATIONS[0].sql;
        let line = first
            .lines()
            .find(|l| l.trim_start().starts_with("orchestration_version"))
            .unwrap();
        assert!(!line.contains("NOT NULL"), "{line}");
    }

    #[test]
    fn ledger_checks() {
        let s = SchemaName::parse("t").unwrap();
        let good: Vec<(i32, String)> = MIGRATIONS.iter().map(|m| (m.version, checksum(m.sql))).collect();
        assert_eq!(verify(&s, &good).unwrap(), latest_version());
        let mut newer = good.clone();
        newer.push((latest_version() + 1, "x".into()));
        assert!(matches!(verify(&s, &newer), Err(MigrateError::NewerSchema { .. })));
        let tampered = vec![(1, "0".repeat(64))];
        assert!(matches!(
            verify(&s, &tampered),
            Err(MigrateError::ChecksumMismatch { version: 1, .. })
        ));
    }
}
