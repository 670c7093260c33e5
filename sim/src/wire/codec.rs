//! The PostgreSQL frontend/backend protocol (version 3.0), server side: the
//! frontend messages tokio-postgres sends, and the backend messages the
//! simulated server answers with. Only what duropg's driver uses.

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// What a client sent (each variant's fields are the message's, as the
/// protocol documentation names them).
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Frontend {
    /// The startup packet's parameters (user, database, options, …).
    Startup(Vec<(String, String)>),
    /// `SSLRequest`: the server answers `N` (no TLS in the simulation).
    SslRequest,
    /// `CancelRequest` (ignored).
    Cancel,
    /// `Parse`: statement name, SQL, declared parameter type OIDs.
    Parse { name: String, sql: String, types: Vec<u32> },
    /// `Bind`: portal, statement, parameter values (binary or text per
    /// their format codes), result format codes.
    Bind {
        portal: String,
        statement: String,
        formats: Vec<i16>,
        values: Vec<Option<Vec<u8>>>,
        results: Vec<i16>,
    },
    /// `Describe` a statement (`S`) or portal (`P`).
    Describe { kind: u8, name: String },
    /// `Execute` a portal.
    Execute { portal: String },
    /// `Close` a statement (`S`) or portal (`P`).
    Close { kind: u8, name: String },
    /// `Sync`.
    Sync,
    /// `Flush`.
    Flush,
    /// `Query` (the simple protocol).
    Query(String),
    /// `Terminate`.
    Terminate,
}

fn cstr(buf: &mut BytesMut) -> Result<String, String> {
    let end = buf.iter().position(|b| *b == 0).ok_or("unterminated string")?;
    let s = String::from_utf8(buf.split_to(end).to_vec()).map_err(|e| e.to_string())?;
    buf.advance(1);
    Ok(s)
}

fn need(buf: &BytesMut, n: usize) -> Result<(), String> {
    if buf.remaining() < n {
        return Err(format!("message too short (need {n} more bytes)"));
    }
    Ok(())
}

fn i16s(buf: &mut BytesMut) -> Result<Vec<i16>, String> {
    need(buf, 2)?;
    let n = buf.get_i16();
    (0..n).map(|_| need(buf, 2).map(|_| buf.get_i16())).collect()
}

/// Read the startup packet (no type byte).
pub async fn read_startup<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Frontend> {
    let len = r.read_i32().await?;
    let mut body = vec![0u8; usize::try_from(len).unwrap_or(0).saturating_sub(4)];
    r.read_exact(&mut body).await?;
    let mut buf = BytesMut::from(&body[..]);
    let code = if buf.remaining() >= 4 { buf.get_i32() } else { 0 };
    match code {
        80_877_103 => Ok(Frontend::SslRequest),
        80_877_102 => Ok(Frontend::Cancel),
        196_608 => {
            let mut params = Vec::new();
            while buf.first().is_some_and(|b| *b != 0) {
                let k = cstr(&mut buf).map_err(invalid)?;
                let v = cstr(&mut buf).map_err(invalid)?;
                params.push((k, v));
            }
            Ok(Frontend::Startup(params))
        }
        other => Err(invalid(format!("unsupported protocol {other}"))),
    }
}

fn invalid(e: impl ToString) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}

/// Read one typed message.
pub async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Frontend> {
    let tag = r.read_u8().await?;
    let len = r.read_i32().await?;
    let mut body = vec![0u8; usize::try_from(len).unwrap_or(0).saturating_sub(4)];
    r.read_exact(&mut body).await?;
    parse(tag, BytesMut::from(&body[..])).map_err(invalid)
}

fn parse(tag: u8, mut buf: BytesMut) -> Result<Frontend, String> {
    Ok(match tag {
        b'P' => {
            let name = cstr(&mut buf)?;
            let sql = cstr(&mut buf)?;
            need(&buf, 2)?;
            let n = buf.get_i16();
            let types = (0..n)
                .map(|_| need(&buf, 4).map(|_| buf.get_u32()))
                .collect::<Result<_, _>>()?;
            Frontend::Parse { name, sql, types }
        }
        b'B' => {
            let portal = cstr(&mut buf)?;
            let statement = cstr(&mut buf)?;
            let formats = i16s(&mut buf)?;
            need(&buf, 2)?;
            let n = buf.get_i16();
            let mut values = Vec::new();
            for _ in 0..n {
                need(&buf, 4)?;
                let len = buf.get_i32();
                if len < 0 {
                    values.push(None);
                } else {
                    let len = usize::try_from(len).unwrap_or(0);
                    need(&buf, len)?;
                    values.push(Some(buf.split_to(len).to_vec()));
                }
            }
            let results = i16s(&mut buf)?;
            Frontend::Bind {
                portal,
                statement,
                formats,
                values,
                results,
            }
        }
        b'D' | b'C' => {
            need(&buf, 1)?;
            let kind = buf.get_u8();
            let name = cstr(&mut buf)?;
            if tag == b'D' {
                Frontend::Describe { kind, name }
            } else {
                Frontend::Close { kind, name }
            }
        }
        b'E' => Frontend::Execute {
            portal: cstr(&mut buf)?,
        },
        b'S' => Frontend::Sync,
        b'H' => Frontend::Flush,
        b'Q' => Frontend::Query(cstr(&mut buf)?),
        b'X' => Frontend::Terminate,
        other => return Err(format!("unknown frontend message {:?}", other as char)),
    })
}

/// Builds backend messages into one buffer.
#[derive(Debug, Default)]
pub struct Out(pub BytesMut);

impl Out {
    fn message(&mut self, tag: u8, body: impl FnOnce(&mut BytesMut)) {
        let mut b = BytesMut::new();
        body(&mut b);
        self.0.put_u8(tag);
        self.0.put_i32(i32::try_from(b.len() + 4).unwrap_or(i32::MAX));
        self.0.extend_from_slice(&b);
    }

    fn put_cstr(b: &mut BytesMut, s: &str) {
        b.extend_from_slice(s.as_bytes());
        b.put_u8(0);
    }

    /// `AuthenticationOk`.
    pub fn auth_ok(&mut self) {
        self.message(b'R', |b| b.put_i32(0));
    }

    /// `ParameterStatus`.
    pub fn parameter(&mut self, name: &str, value: &str) {
        self.message(b'S', |b| {
            Self::put_cstr(b, name);
            Self::put_cstr(b, value);
        });
    }

    /// `BackendKeyData`.
    pub fn key_data(&mut self, pid: i32) {
        self.message(b'K', |b| {
            b.put_i32(pid);
            b.put_i32(0);
        });
    }

    /// `ReadyForQuery` with transaction status `I`, `T` or `E`.
    pub fn ready(&mut self, status: u8) {
        self.message(b'Z', |b| b.put_u8(status));
    }

    /// `ParseComplete`.
    pub fn parse_complete(&mut self) {
        self.message(b'1', |_| {});
    }

    /// `BindComplete`.
    pub fn bind_complete(&mut self) {
        self.message(b'2', |_| {});
    }

    /// `CloseComplete`.
    pub fn close_complete(&mut self) {
        self.message(b'3', |_| {});
    }

    /// `NoData`.
    pub fn no_data(&mut self) {
        self.message(b'n', |_| {});
    }

    /// `EmptyQueryResponse`.
    pub fn empty_query(&mut self) {
        self.message(b'I', |_| {});
    }

    /// `ParameterDescription`.
    pub fn parameter_description(&mut self, oids: &[u32]) {
        self.message(b't', |b| {
            b.put_i16(i16::try_from(oids.len()).unwrap_or(i16::MAX));
            for o in oids {
                b.put_u32(*o);
            }
        });
    }

    /// `RowDescription`: column names and type OIDs, each in `format`.
    pub fn row_description(&mut self, columns: &[(String, u32)], format: i16) {
        self.message(b'T', |b| {
            b.put_i16(i16::try_from(columns.len()).unwrap_or(i16::MAX));
            for (name, oid) in columns {
                Self::put_cstr(b, name);
                b.put_u32(0);
                b.put_i16(0);
                b.put_u32(*oid);
                b.put_i16(-1);
                b.put_i32(-1);
                b.put_i16(format);
            }
        });
    }

    /// `DataRow`.
    pub fn data_row(&mut self, values: &[Option<Vec<u8>>]) {
        self.message(b'D', |b| {
            b.put_i16(i16::try_from(values.len()).unwrap_or(i16::MAX));
            for v in values {
                match v {
                    None => b.put_i32(-1),
                    Some(bytes) => {
                        b.put_i32(i32::try_from(bytes.len()).unwrap_or(i32::MAX));
                        b.extend_from_slice(bytes);
                    }
                }
            }
        });
    }

    /// `CommandComplete`.
    pub fn complete(&mut self, tag: &str) {
        self.message(b'C', |b| Self::put_cstr(b, tag));
    }

    /// `ErrorResponse` (severity `ERROR` or `FATAL`).
    pub fn error(&mut self, severity: &str, code: &str, message: &str, constraint: Option<&str>) {
        self.message(b'E', |b| {
            for (field, value) in [(b'S', severity), (b'V', severity), (b'C', code), (b'M', message)] {
                b.put_u8(field);
                Self::put_cstr(b, value);
            }
            if let Some(c) = constraint {
                b.put_u8(b'n');
                Self::put_cstr(b, c);
            }
            b.put_u8(0);
        });
    }

    /// `NotificationResponse`.
    pub fn notification(&mut self, pid: i32, channel: &str, payload: &str) {
        self.message(b'A', |b| {
            b.put_i32(pid);
            Self::put_cstr(b, channel);
            Self::put_cstr(b, payload);
        });
    }

    /// Take what was built.
    pub fn take(&mut self) -> BytesMut {
        std::mem::take(&mut self.0)
    }
}
