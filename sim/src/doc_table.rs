//! The storage-fault classification table as `docs/semantics.md` documents
//! it, parsed from the document itself (compiled in), so the checker
//! compares the engine's behaviour with what users are promised — not with
//! the code that implements it.

use duropg_core::{Class, StoreFault};

/// The document the table is read from.
pub const SEMANTICS_MD: &str = include_str!("../../docs/semantics.md");

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocRow {
    /// A SQLSTATE, a two-character class, `*`, or a non-SQL label such as `pool timed out`.
    pub code: String,
    /// For a code row whose condition names a message in parentheses: that message.
    pub message: Option<String>,
    /// The documented class.
    pub class: Class,
}

/// The parsed table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocTable {
    rows: Vec<DocRow>,
}

fn parse_class(text: &str) -> Option<Class> {
    match text.trim() {
        "retryable" => Some(Class::Retryable),
        "permanent" => Some(Class::Permanent),
        "ambiguous" => Some(Class::Ambiguous),
        _ => None,
    }
}

impl DocTable {
    /// Parse the table under "Storage-fault classification" in `markdown`.
    ///
    /// # Errors
    /// When the section or its rows are missing or malformed.
    pub fn parse(markdown: &str) -> Result<DocTable, String> {
        let section = markdown
            .split("## Storage-fault classification")
            .nth(1)
            .ok_or("docs/semantics.md has no \"Storage-fault classification\" section")?;
        let mut rows = Vec::new();
        for line in section.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            if cells.len() < 3 {
                return Err(format!("malformed table row: {line}"));
            }
            let class = parse_class(cells[2]).ok_or_else(|| format!("unknown class in row: {line}"))?;
            let message = cells[1]
                .split_once('(')
                .and_then(|(_, rest)| rest.strip_suffix(')'))
                .map(str::to_string);
            rows.push(DocRow {
                code: cells[0].trim_matches('`').to_string(),
                message,
                class,
            });
        }
        if rows.is_empty() {
            return Err("the classification table has no rows".into());
        }
        Ok(DocTable { rows })
    }

    /// The table of this build's `docs/semantics.md`.
    pub fn documented() -> DocTable {
        match DocTable::parse(SEMANTICS_MD) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        }
    }

    fn row(&self, code: &str) -> Option<&DocRow> {
        self.rows.iter().find(|r| r.code == code && r.message.is_none())
    }

    /// The documented row label for a fault (the table's first column).
    pub fn label(&self, fault: &StoreFault) -> String {
        match fault {
            StoreFault::Sql { code, message } => self.sql_row(code, message).code.clone(),
            other => non_sql_label(other).to_string(),
        }
    }

    fn sql_row(&self, code: &str, message: &str) -> &DocRow {
        let with_message = self
            .rows
            .iter()
            .find(|r| r.code == code && r.message.as_ref().is_some_and(|m| message.contains(m.as_str())));
        let by_class = || code.get(..2).and_then(|c| self.row(c));
        with_message
            .or_else(|| self.row(code))
            .or_else(by_class)
            .or_else(|| self.row("*"))
            .unwrap_or(&self.rows[0])
    }

    /// The documented class of a fault.
    pub fn class(&self, fault: &StoreFault) -> Class {
        match fault {
            StoreFault::Sql { code, message } => self.sql_row(code, message).class,
            other => self.row(non_sql_label(other)).map_or(Class::Permanent, |r| r.class),
        }
    }
}

/// The table label of a non-SQL fault.
fn non_sql_label(fault: &StoreFault) -> &'static str {
    match fault {
        StoreFault::PoolTimedOut { .. } => "pool timed out",
        StoreFault::PoolClosed => "pool closed",
        StoreFault::ConnectionClosed { .. } => "connection closed",
        StoreFault::Io { .. } => "I/O error",
        StoreFault::Decode { .. } => "decode error",
        StoreFault::Client { .. } => "client error",
        StoreFault::CommitOutcomeUnknown { .. } => "commit outcome unknown",
        StoreFault::Sql { .. } => "*",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use duropg_core::fault::classify;

    fn sql(code: &str, message: &str) -> StoreFault {
        StoreFault::Sql {
            code: code.into(),
            message: message.into(),
        }
    }

    #[test]
    fn the_documented_table_parses_and_agrees_with_core() {
        let t = DocTable::documented();
        let faults = [
            sql("40P01", "deadlock"),
            sql("40001", "x"),
            sql("55P03", "x"),
            sql("57P01", "x"),
            sql("08006", "x"),
            sql("23505", "x"),
            sql("23503", "x"),
            sql("0A000", "cached plan must not change result type"),
            sql("0A000", "other"),
            sql("ZZ999", "x"),
            StoreFault::PoolClosed,
            StoreFault::ConnectionClosed { detail: "x".into() },
            StoreFault::CommitOutcomeUnknown {
                detail: "x".into(),
                xid: None,
            },
        ];
        for f in &faults {
            assert_eq!(t.class(f), classify(f), "{f:?}");
        }
        assert_eq!(t.label(&sql("08006", "x")), "08");
        assert_eq!(t.label(&StoreFault::PoolClosed), "pool closed");
    }

    #[test]
    fn a_missing_section_is_an_error() {
        assert!(DocTable::parse("# nothing here").is_err());
    }
}
