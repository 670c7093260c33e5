//! The worker hosts' side of the simulated wire: the production driver,
//! dialling the store host over turmoil TCP through duropg's `Connector`
//! hook. Everything above the socket — tokio-postgres, the bb8 pool, the
//! statement cache, pipelining, `PgStore`, the `Engine` — is production code.

use super::server::{STORE_HOST, STORE_PORT};
use duropg::connect::{spawn_connection, Connected, Connector};
use std::sync::Arc;

/// The tenant schema the simulated hosts use.
pub const SCHEMA: &str = "duropg";

/// The connection string the simulated hosts use (the host is turmoil's).
pub fn url() -> String {
    format!("postgres://duropg@{STORE_HOST}:{STORE_PORT}/duropg")
}

/// Open connections over turmoil TCP.
pub fn connector() -> Connector {
    Arc::new(|config: tokio_postgres::Config| {
        Box::pin(async move {
            let stream = match turmoil::net::TcpStream::connect((STORE_HOST, STORE_PORT)).await {
                Ok(s) => s,
                Err(_) => return Err(refused(&config).await),
            };
            let (client, connection) = config.connect_raw(stream, tokio_postgres::NoTls).await?;
            Ok(Connected {
                client,
                notifications: spawn_connection(connection),
            })
        })
    })
}

/// The driver's own error for a connection that could not be made: its
/// handshake over a stream that is already closed.
async fn refused(config: &tokio_postgres::Config) -> tokio_postgres::Error {
    let (stream, peer) = tokio::io::duplex(64);
    drop(peer);
    match config.connect_raw(stream, tokio_postgres::NoTls).await {
        Err(e) => e,
        Ok(_) => unreachable!("a handshake over a closed stream cannot succeed"),
    }
}
