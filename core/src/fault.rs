//! The storage-fault classification table: the one place that decides whether
//! a storage fault is worth retrying.
//!
//! A [`StoreFault`] is a typed description of what went wrong below the engine
//! (a SQLSTATE from the server, a pool that timed out, a connection that
//! dropped, a row that would not decode, a COMMIT whose reply never came).
//! [`classify`] maps it to a [`Class`]; [`to_provider_error`] turns it into the
//! duroxide [`ProviderError`] the runtime sees. Classification reads typed codes
//! only — never error text — with one documented exception: SQLSTATE `0A000`
//! is retryable only when its message is "cached plan must not change result
//! type" (a prepared statement outlived a migration), because Postgres gives
//! that condition no code of its own.
//!
//! Every row of [`SQLSTATE_RULES`] is documented, with its reason, in
//! `docs/semantics.md`; a test keeps the two identical.

use duroxide::providers::ProviderError;
use std::fmt;

/// How the engine and the runtime should treat a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// The operation did not take effect and may succeed if run again.
    Retryable,
    /// Running the operation again cannot help (bad data, bad request, a bug).
    Permanent,
    /// The operation may or may not have taken effect (a COMMIT sent, no reply).
    /// The engine must find out which before it retries.
    Ambiguous,
}

impl Class {
    /// Lower-case name used in messages and docs.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Retryable => "retryable",
            Class::Permanent => "permanent",
            Class::Ambiguous => "ambiguous",
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A storage fault, typed. Built in exactly one place per store (the Postgres
/// store maps every tokio-postgres and bb8 error through one function).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreFault {
    /// The server answered with an error carrying a SQLSTATE code.
    Sql {
        /// The five-character SQLSTATE, e.g. `40P01`.
        code: String,
        /// The server's message (kept for humans; classification ignores it
        /// except for the `0A000` cached-plan row).
        message: String,
    },
    /// No pooled connection became available within the pool's wait limit.
    PoolTimedOut {
        /// How long the caller waited.
        waited_ms: u64,
        /// The last error seen while opening a connection, if any (a pool
        /// that cannot connect reports it here rather than hiding it).
        last_connect_error: Option<String>,
    },
    /// The pool has been shut down.
    PoolClosed,
    /// The connection was closed (by the server, a proxy, or the network)
    /// before a request was answered. The request did not take effect.
    ConnectionClosed {
        /// What the driver reported.
        detail: String,
    },
    /// An I/O error on the socket, or a failure to connect.
    Io {
        /// What the driver reported.
        detail: String,
    },
    /// A row could not be decoded: a column had an unexpected type or NULL, or
    /// a stored JSON payload did not parse.
    Decode {
        /// The table the row came from.
        table: String,
        /// Which row (instance id, queue id, event id…).
        key: String,
        /// What failed.
        detail: String,
    },
    /// The database driver refused the request or could not understand the
    /// reply (bad parameter, protocol mismatch, authentication method): a bug
    /// or a misconfiguration, not a condition that clears.
    Client {
        /// What the driver reported.
        detail: String,
    },
    /// A COMMIT was sent and the connection failed before its reply arrived:
    /// the transaction may have committed or not.
    CommitOutcomeUnknown {
        /// What the driver reported.
        detail: String,
        /// The transaction id, when the store learned it before the failure;
        /// the engine uses it to ask the store what became of the transaction.
        xid: Option<u64>,
    },
}

impl fmt::Display for StoreFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreFault::Sql { code, message } => {
                let rule = sqlstate_rule(code, message);
                write!(f, "{} (SQLSTATE {code}): {message}", rule.condition)
            }
            StoreFault::PoolTimedOut {
                waited_ms,
                last_connect_error,
            } => {
                write!(f, "no pooled connection became available within {waited_ms} ms")?;
                match last_connect_error {
                    Some(e) => write!(f, " (last connection attempt: {e})"),
                    None => Ok(()),
                }
            }
            StoreFault::PoolClosed => write!(f, "the connection pool is closed"),
            StoreFault::ConnectionClosed { detail } => write!(f, "connection closed: {detail}"),
            StoreFault::Io { detail } => write!(f, "I/O error: {detail}"),
            StoreFault::Decode { table, key, detail } => {
                write!(f, "corrupted row in table {table} ({key}): {detail}")
            }
            StoreFault::Client { detail } => write!(f, "database client error: {detail}"),
            StoreFault::CommitOutcomeUnknown { detail, .. } => {
                write!(
                    f,
                    "commit outcome unknown (connection lost after COMMIT was sent): {detail}"
                )
            }
        }
    }
}

/// One row of the SQLSTATE classification table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlStateRule {
    /// A full five-character SQLSTATE (`40P01`), or a two-character class
    /// (`08`) matching every code in that class.
    pub code: &'static str,
    /// When set, the rule applies only if the server message contains this text.
    pub message_contains: Option<&'static str>,
    /// Postgres's name for the condition.
    pub condition: &'static str,
    /// The class the fault gets.
    pub class: Class,
    /// Why — the sentence documented in `docs/semantics.md`.
    pub reason: &'static str,
}

const fn rule(code: &'static str, condition: &'static str, class: Class, reason: &'static str) -> SqlStateRule {
    SqlStateRule {
        code,
        message_contains: None,
        condition,
        class,
        reason,
    }
}

/// The text Postgres uses when a cached prepared statement's result type
/// changed under it (after a migration); it has no SQLSTATE of its own.
pub const CACHED_PLAN_MESSAGE: &str = "cached plan must not change result type";

/// The classification table. Lookup order: a full code with a message
/// condition, a full code, a two-character class, then [`UNLISTED_RULE`].
pub const SQLSTATE_RULES: &[SqlStateRule] = &[
    // Transaction rollback (class 40): the server rolled the transaction back.
    rule("40001", "serialization_failure", Class::Retryable, "the transaction was rolled back to keep serializability; rerunning it is the documented remedy"),
    rule("40P01", "deadlock_detected", Class::Retryable, "Postgres aborted one side of a deadlock; the victim rolled back and can rerun"),
    rule("40002", "transaction_integrity_constraint_violation", Class::Permanent, "a deferred constraint failed at commit; rerunning the same writes fails the same way"),
    rule("40003", "statement_completion_unknown", Class::Ambiguous, "the server cannot say whether the statement completed"),
    rule("40", "transaction_rollback", Class::Retryable, "the transaction was rolled back as a whole and nothing of it persists"),
    // Connection exception (class 08): the request never completed.
    rule("08007", "transaction_resolution_unknown", Class::Ambiguous, "the connection failed during COMMIT; the transaction may or may not have committed"),
    rule("08P01", "protocol_violation", Class::Permanent, "client and server disagree on the protocol; a retry sends the same bytes"),
    rule("08", "connection_exception", Class::Retryable, "the connection failed before the request completed; an uncommitted transaction is rolled back by the server"),
    // Operator intervention (class 57).
    rule("57014", "query_canceled", Class::Retryable, "statement_timeout or a cancel request stopped the statement; the transaction rolled back"),
    rule("57P01", "admin_shutdown", Class::Retryable, "the server is shutting down or the backend was terminated (pg_terminate_backend); a new connection will work"),
    rule("57P02", "crash_shutdown", Class::Retryable, "the server is restarting after a crash of another backend"),
    rule("57P03", "cannot_connect_now", Class::Retryable, "the server is starting up or in recovery"),
    rule("57P05", "idle_session_timeout", Class::Retryable, "the server closed an idle pooled connection; a fresh one will work"),
    rule("57P04", "database_dropped", Class::Permanent, "the database no longer exists"),
    rule("57", "operator_intervention", Class::Permanent, "an operator stopped the work for a reason not known to be transient"),
    // Insufficient resources (class 53) and system errors (class 58).
    rule("53", "insufficient_resources", Class::Retryable, "out of connections, memory or disk is a state of the server that can clear; retries are bounded"),
    rule("58000", "system_error", Class::Retryable, "an error outside Postgres (such as the OS) that can clear"),
    rule("58030", "io_error", Class::Retryable, "the server hit an I/O error that can clear"),
    rule("58", "system_error_class", Class::Permanent, "missing or duplicate files on the server need an operator"),
    // Object state (class 55).
    rule("55P03", "lock_not_available", Class::Retryable, "lock_timeout or NOWAIT gave up on a lock another transaction held; it will be released"),
    rule("55", "object_not_in_prerequisite_state", Class::Permanent, "the object is in a state that a retry does not change"),
    // Snapshot too old (class 72).
    rule("72", "snapshot_too_old", Class::Retryable, "a fresh transaction gets a fresh snapshot"),
    // Feature not supported (class 0A).
    SqlStateRule {
        code: "0A000",
        message_contains: Some(CACHED_PLAN_MESSAGE),
        condition: "feature_not_supported (cached plan must not change result type)",
        class: Class::Retryable,
        reason: "a cached prepared statement outlived a migration; the store drops its statement cache and the rerun prepares afresh",
    },
    rule("26000", "invalid_sql_statement_name", Class::Retryable, "a prepared statement vanished from the session (a pooler reset it); the store drops its statement cache and the rerun prepares afresh"),
    rule("0A", "feature_not_supported", Class::Permanent, "the statement uses something this server does not support"),
    // Invalid transaction state (class 25).
    rule("25P03", "idle_in_transaction_session_timeout", Class::Retryable, "the server ended a transaction that sat idle; the connection is gone and the work rolled back"),
    rule("25P04", "transaction_timeout", Class::Retryable, "the server ended a transaction that ran past transaction_timeout (PostgreSQL 17); the connection is gone and the work rolled back"),
    rule("25006", "read_only_sql_transaction", Class::Retryable, "the connection reached a read-only server (a standby, or a primary being demoted during a failover); the store discards it and a fresh connection finds the new primary"),
    rule("25", "invalid_transaction_state", Class::Permanent, "a statement ran in a transaction state it cannot run in: a bug, not a condition"),
    // Data and integrity errors: the same input fails the same way.
    rule("23505", "unique_violation", Class::Permanent, "a row with this key already exists (for history: a duplicate event id); rerunning inserts the same key"),
    rule("23503", "foreign_key_violation", Class::Permanent, "a referenced row does not exist; rerunning cannot create it"),
    rule("23", "integrity_constraint_violation", Class::Permanent, "the write breaks a constraint; rerunning writes the same values"),
    rule("22", "data_exception", Class::Permanent, "a value is malformed or out of range for its column"),
    rule("42", "syntax_error_or_access_rule_violation", Class::Permanent, "the SQL or the role's privileges are wrong; needs a code or grant change"),
    rule("28", "invalid_authorization_specification", Class::Permanent, "the role or password is wrong"),
    rule("3D", "invalid_catalog_name", Class::Permanent, "the database does not exist"),
    rule("3F", "invalid_schema_name", Class::Permanent, "the schema does not exist"),
    rule("54", "program_limit_exceeded", Class::Permanent, "a statement or value exceeds a server limit"),
    rule("XX", "internal_error", Class::Permanent, "the server reports an internal error or corrupted data"),
];

/// The rule for a SQLSTATE whose class is not listed in [`SQLSTATE_RULES`].
pub const UNLISTED_RULE: SqlStateRule = rule(
    "*",
    "unlisted_sqlstate",
    Class::Permanent,
    "a condition not known to be transient is not retried in a loop",
);

/// Find the rule for a SQLSTATE `code` with server `message`. Total: every
/// input gets exactly one rule.
pub fn sqlstate_rule(code: &str, message: &str) -> &'static SqlStateRule {
    let exact_with_message = SQLSTATE_RULES
        .iter()
        .find(|r| r.code == code && r.message_contains.is_some_and(|m| message.contains(m)));
    let exact = || {
        SQLSTATE_RULES
            .iter()
            .find(|r| r.code == code && r.message_contains.is_none())
    };
    let by_class = || {
        let class = code.get(..2)?;
        SQLSTATE_RULES
            .iter()
            .find(|r| r.code.len() == 2 && r.code == class && r.message_contains.is_none())
    };
    exact_with_message
        .or_else(exact)
        .or_else(by_class)
        .unwrap_or(&UNLISTED_RULE)
}

/// Classify a storage fault.
pub fn classify(fault: &StoreFault) -> Class {
    match fault {
        StoreFault::Sql { code, message } => sqlstate_rule(code, message).class,
        StoreFault::PoolTimedOut { .. }
        | StoreFault::PoolClosed
        | StoreFault::ConnectionClosed { .. }
        | StoreFault::Io { .. } => Class::Retryable,
        StoreFault::Decode { .. } | StoreFault::Client { .. } => Class::Permanent,
        StoreFault::CommitOutcomeUnknown { .. } => Class::Ambiguous,
    }
}

/// The non-SQL rows of the classification table, as documented.
pub const NON_SQL_RULES: &[(&str, Class, &str)] = &[
    ("pool timed out", Class::Retryable, "every connection was busy or the server was unreachable for the pool's wait limit; that clears"),
    ("pool closed", Class::Retryable, "the pool is being rebuilt or shut down; the engine's retries are bounded, so a closed pool ends as an error, not a loop"),
    ("connection closed", Class::Retryable, "the connection dropped before the request was answered; the server rolls back any open transaction"),
    ("I/O error", Class::Retryable, "a socket error or refused connect is a state of the network that can clear"),
    ("decode error", Class::Permanent, "a corrupted row decodes the same way every time; it surfaces naming the table and row"),
    ("client error", Class::Permanent, "the driver refused the request or the reply (a parameter, protocol or authentication-method problem): retrying sends the same request"),
    ("commit outcome unknown", Class::Ambiguous, "COMMIT was sent and its reply lost; the engine asks the store whether the transaction committed before it retries"),
];

/// A classification function. Production always uses [`classify`]; the
/// simulator swaps in a deliberately wrong one to prove its checker notices.
pub type Classifier = fn(&StoreFault) -> Class;

/// Turn a fault into the error duroxide sees. `Ambiguous` becomes retryable:
/// by the time a fault reaches the runtime the engine has already tried to
/// resolve it, and a rerun is safe because every write is guarded by its lock
/// token (a rerun of a write that did commit is rejected, never applied twice).
pub fn to_provider_error(operation: &str, fault: &StoreFault) -> ProviderError {
    provider_error(operation, fault, classify(fault))
}

/// Turn a fault of a known `class` into the error duroxide sees.
pub fn provider_error(operation: &str, fault: &StoreFault, class: Class) -> ProviderError {
    let message = format!("{class} storage fault: {fault}");
    match class {
        Class::Permanent => ProviderError::permanent(operation, message),
        Class::Retryable | Class::Ambiguous => ProviderError::retryable(operation, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{quickcheck, Arbitrary, Gen};

    fn sql(code: &str) -> StoreFault {
        StoreFault::Sql {
            code: code.into(),
            message: "boom".into(),
        }
    }

    #[test]
    fn seed_rows() {
        assert_eq!(classify(&sql("40P01")), Class::Retryable);
        assert_eq!(classify(&sql("40001")), Class::Retryable);
        assert_eq!(classify(&sql("23505")), Class::Permanent);
        assert_eq!(classify(&sql("23503")), Class::Permanent);
        assert_eq!(
            classify(&StoreFault::PoolTimedOut {
                waited_ms: 5,
                last_connect_error: None
            }),
            Class::Retryable
        );
        assert_eq!(classify(&StoreFault::Io { detail: "x".into() }), Class::Retryable);
    }

    #[test]
    fn connection_loss_rows_are_retryable() {
        for code in [
            "08000", "08001", "08003", "08006", "57P01", "57P02", "57P03", "57014", "55P03",
        ] {
            assert_eq!(classify(&sql(code)), Class::Retryable, "{code}");
        }
        assert_eq!(classify(&sql("08P01")), Class::Permanent);
        assert_eq!(classify(&sql("08007")), Class::Ambiguous);
    }

    #[test]
    fn failover_and_pooler_rows() {
        // A reconnect that landed on a standby, or a primary being demoted.
        assert_eq!(classify(&sql("25006")), Class::Retryable);
        assert_eq!(classify(&sql("25P04")), Class::Retryable);
        // Another invalid transaction state is still a bug.
        assert_eq!(classify(&sql("25001")), Class::Permanent);
        // The server is starting up or in recovery (a standby being promoted).
        assert_eq!(classify(&sql("57P03")), Class::Retryable);
        // Too many connections (a pooler's or the server's limit).
        assert_eq!(classify(&sql("53300")), Class::Retryable);
        // PgBouncer's protocol errors (an unsupported startup parameter) need a setting.
        assert_eq!(classify(&sql("08P01")), Class::Permanent);
    }

    #[test]
    fn cached_plan_is_retryable_only_with_its_message() {
        let cached = StoreFault::Sql {
            code: "0A000".into(),
            message: "cached plan must not change result type".into(),
        };
        assert_eq!(classify(&cached), Class::Retryable);
        assert_eq!(classify(&sql("0A000")), Class::Permanent);
    }

    #[test]
    fn unlisted_classes_are_permanent() {
        assert_eq!(classify(&sql("P0001")), Class::Permanent);
        assert_eq!(sqlstate_rule("P0001", "").condition, "unlisted_sqlstate");
        assert_eq!(sqlstate_rule("", "").condition, "unlisted_sqlstate");
    }

    #[test]
    fn provider_error_names_code_class_and_condition() {
        let e = to_provider_error("ack_orchestration_item", &sql("40P01"));
        assert!(e.is_retryable());
        assert_eq!(e.operation, "ack_orchestration_item");
        assert!(
            e.message.contains("40P01") && e.message.contains("deadlock_detected"),
            "{}",
            e.message
        );
        let ambiguous = StoreFault::CommitOutcomeUnknown {
            detail: "eof".into(),
            xid: None,
        };
        assert!(to_provider_error("x", &ambiguous).is_retryable());
        let decode = StoreFault::Decode {
            table: "history".into(),
            key: "instance i1".into(),
            detail: "bad json".into(),
        };
        let e = to_provider_error("read", &decode);
        assert!(!e.is_retryable() && e.message.contains("history") && e.message.contains("i1"));
    }

    #[test]
    fn every_rule_code_is_a_class_or_a_full_code() {
        for r in SQLSTATE_RULES {
            assert!(r.code.len() == 2 || r.code.len() == 5, "{}", r.code);
            assert!(r.code.chars().all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()));
            assert!(!r.reason.is_empty());
        }
    }

    /// The markdown rows docs/semantics.md must hold, in table order.
    fn expected_doc_rows() -> Vec<String> {
        let mut rows: Vec<String> = SQLSTATE_RULES
            .iter()
            .chain(std::iter::once(&UNLISTED_RULE))
            .map(|r| format!("| `{}` | {} | {} | {} |", r.code, r.condition, r.class, r.reason))
            .collect();
        for (what, class, reason) in NON_SQL_RULES {
            rows.push(format!("| `{what}` | - | {class} | {reason} |"));
        }
        rows
    }

    /// The table in docs/semantics.md lists every rule with the same class
    /// and reason, and nothing else. On failure the message holds the rows to paste.
    #[test]
    fn documented_table_matches_code() {
        let doc = include_str!("../../docs/semantics.md");
        let documented: Vec<String> = doc
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(str::to_string)
            .collect();
        let expected = expected_doc_rows();
        assert!(
            documented == expected,
            "docs/semantics.md classification table is out of date; it should read:\n{}",
            expected.join("\n")
        );
    }

    #[derive(Clone, Debug)]
    struct Code(String);

    impl Arbitrary for Code {
        fn arbitrary(g: &mut Gen) -> Self {
            const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
            let known: Vec<&str> = SQLSTATE_RULES.iter().map(|r| r.code).collect();
            let mut code: String = (0..5).map(|_| *g.choose(ALPHABET).unwrap_or(&b'0') as char).collect();
            if bool::arbitrary(g) {
                // Bias towards listed classes so every row is exercised.
                let prefix = g.choose(&known).copied().unwrap_or("40");
                code.replace_range(..prefix.len(), prefix);
            }
            Code(code)
        }
    }

    quickcheck! {
        /// Classification is total and agrees with the table: an exact row
        /// wins over its class, a class row covers every code in it, and
        /// anything unlisted is permanent.
        fn classification_is_total_and_tabled(code: Code) -> bool {
            let code = code.0;
            let got = classify(&StoreFault::Sql { code: code.clone(), message: String::new() });
            let exact = SQLSTATE_RULES.iter().find(|r| r.code == code && r.message_contains.is_none());
            let class = SQLSTATE_RULES.iter().find(|r| r.code == &code[..2]);
            let expected = match (exact, class) {
                (Some(r), _) => r.class,
                (None, Some(r)) => r.class,
                (None, None) => Class::Permanent,
            };
            got == expected
        }
    }
}
