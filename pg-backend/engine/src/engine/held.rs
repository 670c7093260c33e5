//! Holding claims made by acks until a fetch takes them, for both queues
//! (see `prefetch.rs` for the rules).

use super::prefetch::{Prefetch, Ready, HOLD};
use super::Engine;
use crate::retry::RetryPolicy;
use crate::store::{Guarded, QueueKind, Store};
use duropg_core::fault::Classifier;
use std::sync::{Arc, Mutex};

impl<S: Store> Engine<S> {
    /// A held claim that a fetch of kind `key` (of `family`) may take.
    /// Claims whose hold ended, or made for another family of fetch, are
    /// given back first — before this fetch claims, so that it can see
    /// what they held.
    pub(super) async fn take_held<W, T>(
        &self,
        pending: &Mutex<Prefetch<W, T>>,
        queue: QueueKind,
        key: &str,
        family: &str,
    ) -> Option<Ready<W>> {
        let (taken, given_back) = pending.lock().ok()?.take(key, family, tokio::time::Instant::now());
        for ready in given_back {
            give_back(
                Arc::clone(&self.store),
                self.config.retry,
                self.classify,
                queue,
                ready.token,
            )
            .await;
        }
        taken
    }

    /// Give back a claim made by an ack (unlock it, return its attempt) on
    /// a task of its own; idempotent by its token, so it is safe whether or
    /// not the claim committed.
    pub(super) fn give_back_later(&self, queue: QueueKind, token: String) {
        let (store, policy, classify) = (Arc::clone(&self.store), self.config.retry, self.classify);
        (self.spawn)(Box::pin(give_back(store, policy, classify, queue, token)));
    }

    /// Hold a claim made by an ack for the next fetch, and give it back if
    /// no fetch takes it within [`HOLD`].
    pub(super) fn hold<W, T>(&self, pending: &Arc<Mutex<Prefetch<W, T>>>, queue: QueueKind, ready: Ready<W>)
    where
        W: Send + 'static,
        T: Send + 'static,
    {
        let token = ready.token.clone();
        match pending.lock() {
            Ok(mut p) => p.push(ready),
            Err(_) => return self.give_back_later(queue, token),
        }
        let (pending, store) = (Arc::clone(pending), Arc::clone(&self.store));
        let (policy, classify) = (self.config.retry, self.classify);
        (self.spawn)(Box::pin(async move {
            tokio::time::sleep(HOLD).await;
            if pending.lock().ok().and_then(|mut p| p.remove(&token)).is_some() {
                tracing::debug!(?queue, "no fetch took a claim made by an ack; giving it back");
                give_back(store, policy, classify, queue, token).await;
            }
        }));
    }
}

/// Unlock a claim made by an ack and give back its attempt, under the
/// retry policy, waking a fetcher for it.
async fn give_back<S: Store>(
    store: Arc<S>,
    policy: RetryPolicy,
    classify: Classifier,
    queue: QueueKind,
    token: String,
) {
    let released = policy
        .run_idempotent(classify, "give_back_claim", || async {
            match queue {
                QueueKind::Worker => store.abandon_work_item(&token, None, true).await,
                QueueKind::Orchestrator => store.abandon_instance(&token, None, true).await,
            }
        })
        .await;
    match released {
        Ok(Guarded::Applied) if !store.wakes_for_own_writes() => store.signals().wake(queue, 1),
        Ok(_) => {}
        Err(fault) => {
            tracing::warn!(%fault, ?queue, "could not give back a claim made by an ack; it ends with its lease");
        }
    }
}
