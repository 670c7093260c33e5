//! What PostgreSQL's `Describe` says of each statement of `sql.rs`: its
//! parameter types and its result columns. Read from `signatures.txt`,
//! which `sim/tests/signatures.rs` checks against a real server.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use tokio_postgres::types::Type;

/// One statement's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// Parameter types, `$1` first.
    pub params: Vec<Type>,
    /// Result columns: name and type.
    pub columns: Vec<(String, Type)>,
}

const FILE: &str = include_str!("signatures.txt");

fn ty(oid: &str) -> Type {
    let oid: u32 = oid
        .parse()
        .unwrap_or_else(|_| panic!("signatures.txt: bad type oid {oid:?}"));
    Type::from_oid(oid).unwrap_or_else(|| panic!("signatures.txt: type oid {oid} is not built in"))
}

fn parse(line: &str) -> (String, Signature) {
    let mut parts = line.split('\t');
    let name = parts.next().unwrap_or_default().to_string();
    let params = parts.next().unwrap_or_default();
    let columns = parts.next().unwrap_or_default();
    let params = params.split(',').filter(|s| !s.is_empty()).map(ty).collect();
    let columns = columns
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|c| {
            let (n, oid) = c
                .rsplit_once(':')
                .unwrap_or_else(|| panic!("signatures.txt: bad column {c:?}"));
            (n.to_string(), ty(oid))
        })
        .collect();
    (name, Signature { params, columns })
}

/// Every statement's signature, by its name in `sql.rs`.
pub fn all() -> &'static BTreeMap<String, Signature> {
    static ALL: OnceLock<BTreeMap<String, Signature>> = OnceLock::new();
    ALL.get_or_init(|| FILE.lines().filter(|l| !l.is_empty()).map(parse).collect())
}

/// The signature of statement `name`.
pub fn of(name: &str) -> Option<&'static Signature> {
    all().get(name)
}
