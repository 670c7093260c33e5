//! Cross-process wake-ups: every write that makes work visible sends a
//! `NOTIFY` on a channel named after the schema, in its own transaction (so
//! it is delivered only if the write commits). Each store keeps one extra
//! connection that `LISTEN`s and wakes local fetchers. Payload:
//! `<queue>:<count>:<origin>` — `o`/`w`, how many items, and which store sent
//! it (a store ignores its own: the engine already woke its fetchers).

use super::conn::ConnectionManager;
use duropg_engine::store::{QueueKind, Signals};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// The payload for `count` items of `queue` from `origin`.
pub fn payload(queue: QueueKind, count: usize, origin: &str) -> String {
    let q = match queue {
        QueueKind::Orchestrator => 'o',
        QueueKind::Worker => 'w',
    };
    format!("{q}:{count}:{origin}")
}

/// Parse a payload; `None` for anything not ours or from `origin` itself.
pub fn parse(payload: &str, origin: &str) -> Option<(QueueKind, usize)> {
    let mut parts = payload.splitn(3, ':');
    let queue = match parts.next()? {
        "o" => QueueKind::Orchestrator,
        "w" => QueueKind::Worker,
        _ => return None,
    };
    let count: usize = parts.next()?.parse().ok()?;
    (parts.next()? != origin).then_some((queue, count))
}

/// Aborts the listener task when the store goes away.
#[derive(Debug)]
pub struct Listener(JoinHandle<()>);

impl Drop for Listener {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Start listening: reconnects with backoff for as long as the store lives.
/// While it is connected, `signals.cross_process()` is true.
/// `schema` labels its [`LISTENER_CONNECTED`](duropg_engine::metrics::LISTENER_CONNECTED)
/// gauge; received wake-ups count in
/// [`WAKEUPS_RECEIVED_TOTAL`](duropg_engine::metrics::WAKEUPS_RECEIVED_TOTAL).
pub fn spawn(
    manager: ConnectionManager,
    listen_sql: String,
    origin: String,
    signals: Arc<Signals>,
    schema: String,
) -> Listener {
    Listener(tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        duropg_engine::metrics::listener_connected(&schema, false);
        loop {
            if let Ok(mut connected) = manager.open_connected().await {
                if connected.client.batch_execute(&listen_sql).await.is_ok() {
                    signals.set_cross_process(true);
                    duropg_engine::metrics::listener_connected(&schema, true);
                    backoff = Duration::from_millis(100);
                    // Anything written while nobody listened: let idle fetchers look once.
                    signals.wake(QueueKind::Orchestrator, 1);
                    signals.wake(QueueKind::Worker, 1);
                    while let Some(n) = connected.notifications.recv().await {
                        if let Some((queue, count)) = parse(n.payload(), &origin) {
                            duropg_engine::metrics::wakeups_received(queue, u64::try_from(count).unwrap_or(u64::MAX));
                            signals.wake(queue, count);
                        }
                    }
                    signals.set_cross_process(false);
                    duropg_engine::metrics::listener_connected(&schema, false);
                    tracing::debug!("notification listener disconnected; reconnecting");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_own_ones_are_ignored() {
        let p = payload(QueueKind::Worker, 3, "a-1");
        assert_eq!(parse(&p, "b-2"), Some((QueueKind::Worker, 3)));
        assert_eq!(parse(&p, "a-1"), None);
        assert_eq!(parse("x:1:z", "a"), None);
        assert_eq!(parse("o:many:z", "a"), None);
    }
}
