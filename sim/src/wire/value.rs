//! Values on the wire: what a bound parameter decodes to and what a result
//! column encodes from, in PostgreSQL's binary format (tokio-postgres sends
//! every parameter and asks for every result in binary).

use tokio_postgres::types::{FromSql, IsNull, ToSql, Type};

/// One SQL value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// SQL NULL (of any type).
    Null,
    /// `boolean`.
    Bool(bool),
    /// `integer`.
    Int4(i32),
    /// `bigint`.
    Int8(i64),
    /// `text`.
    Text(String),
    /// `text[]`.
    TextArray(Vec<Option<String>>),
    /// `bigint[]`.
    Int8Array(Vec<Option<i64>>),
    /// `void` (what `pg_notify` returns).
    Void,
}

impl Value {
    /// A nullable text value.
    pub fn text(v: Option<impl Into<String>>) -> Self {
        v.map_or(Value::Null, |s| Value::Text(s.into()))
    }

    /// A nullable bigint value.
    pub fn int8(v: Option<i64>) -> Self {
        v.map_or(Value::Null, Value::Int8)
    }

    /// Decode a binary parameter of type `ty` (`None`: SQL NULL).
    pub fn decode(ty: &Type, raw: Option<&[u8]>) -> Result<Self, String> {
        let Some(raw) = raw else {
            return Ok(Value::Null);
        };
        let bad = |e: Box<dyn std::error::Error + Sync + Send>| format!("cannot decode a {ty} parameter: {e}");
        Ok(match *ty {
            Type::BOOL => Value::Bool(bool::from_sql(ty, raw).map_err(bad)?),
            Type::INT4 => Value::Int4(i32::from_sql(ty, raw).map_err(bad)?),
            Type::INT8 => Value::Int8(i64::from_sql(ty, raw).map_err(bad)?),
            Type::TEXT | Type::VARCHAR => Value::Text(String::from_sql(ty, raw).map_err(bad)?),
            Type::TEXT_ARRAY => Value::TextArray(Vec::<Option<String>>::from_sql(ty, raw).map_err(bad)?),
            Type::INT8_ARRAY => Value::Int8Array(Vec::<Option<i64>>::from_sql(ty, raw).map_err(bad)?),
            _ => return Err(format!("the simulated server does not decode parameters of type {ty}")),
        })
    }

    /// Encode as a result column of type `ty` in binary (`None`: NULL).
    ///
    /// # Panics
    /// When the value does not fit the column type: a statement model that
    /// returns the wrong type is a bug in the model, and must be loud.
    pub fn encode(&self, ty: &Type, column: &str) -> Option<Vec<u8>> {
        let mut out = bytes::BytesMut::new();
        let written = match (self, ty) {
            (Value::Null, _) | (Value::Void, &Type::VOID) => return None,
            (Value::Bool(b), &Type::BOOL) => b.to_sql(ty, &mut out),
            (Value::Int4(n), &Type::INT4) => n.to_sql(ty, &mut out),
            (Value::Int8(n), &Type::INT8) => n.to_sql(ty, &mut out),
            (Value::Text(s), &Type::TEXT) => s.to_sql(ty, &mut out),
            (Value::TextArray(v), &Type::TEXT_ARRAY) => v.to_sql(ty, &mut out),
            (Value::Int8Array(v), &Type::INT8_ARRAY) => v.to_sql(ty, &mut out),
            (v, t) => panic!("statement model bug: column {column:?} is {t} but the model returned {v:?}"),
        };
        match written {
            Ok(IsNull::No) => Some(out.to_vec()),
            Ok(IsNull::Yes) => None,
            Err(e) => panic!("cannot encode column {column:?}: {e}"),
        }
    }

    /// The value in PostgreSQL's text format (simple-protocol results).
    pub fn to_text(&self) -> Option<String> {
        match self {
            Value::Null | Value::Void => None,
            Value::Bool(b) => Some(if *b { "t" } else { "f" }.to_string()),
            Value::Int4(n) => Some(n.to_string()),
            Value::Int8(n) => Some(n.to_string()),
            Value::Text(s) => Some(s.clone()),
            Value::TextArray(_) | Value::Int8Array(_) => Some(format!("{self:?}")),
        }
    }
}

/// The bound parameters of one statement, read by their SQL number (`$1` is
/// `p.text(1)`), each accessor insisting on the declared type.
#[derive(Debug, Clone, Default)]
pub struct Params(pub Vec<Value>);

impl Params {
    fn at(&self, n: usize) -> &Value {
        self.0
            .get(n.wrapping_sub(1))
            .unwrap_or_else(|| panic!("statement model bug: no parameter ${n} (have {})", self.0.len()))
    }

    fn wrong(&self, n: usize, want: &str) -> ! {
        panic!("statement model bug: ${n} is {:?}, not {want}", self.at(n))
    }

    /// `$n` as nullable text.
    pub fn text(&self, n: usize) -> Option<String> {
        match self.at(n) {
            Value::Null => None,
            Value::Text(s) => Some(s.clone()),
            _ => self.wrong(n, "text"),
        }
    }

    /// `$n` as nullable bigint (an integer parameter widens).
    pub fn int8(&self, n: usize) -> Option<i64> {
        match self.at(n) {
            Value::Null => None,
            Value::Int8(v) => Some(*v),
            Value::Int4(v) => Some(i64::from(*v)),
            _ => self.wrong(n, "bigint"),
        }
    }

    /// `$n` as nullable boolean.
    pub fn bool(&self, n: usize) -> Option<bool> {
        match self.at(n) {
            Value::Null => None,
            Value::Bool(b) => Some(*b),
            _ => self.wrong(n, "boolean"),
        }
    }

    /// `$n` as a text array (NULL: empty).
    pub fn texts(&self, n: usize) -> Vec<Option<String>> {
        match self.at(n) {
            Value::Null => Vec::new(),
            Value::TextArray(v) => v.clone(),
            _ => self.wrong(n, "text[]"),
        }
    }

    /// `$n` as a bigint array (NULL: empty).
    pub fn int8s(&self, n: usize) -> Vec<Option<i64>> {
        match self.at(n) {
            Value::Null => Vec::new(),
            Value::Int8Array(v) => v.clone(),
            _ => self.wrong(n, "bigint[]"),
        }
    }
}
