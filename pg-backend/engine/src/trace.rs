//! Tracing spans: one per duroxide `Provider` and `ProviderAdmin` call.
//!
//! Each span is named after the call (`fetch_orchestration_item`,
//! `get_system_metrics`, …), at `DEBUG` level under the `duropg` target,
//! with the fields
//!
//! - `operation`: the call's name (also the span's name);
//! - `instance`: the instance it concerns, when the call names one or a
//!   fetch found one;
//! - `attempts`: how many attempts the retry policy made at the call's
//!   (last) store transaction — 1 when the first succeeded;
//! - `outcome`: `ok`, `empty` (a fetch that found no work), `retryable` or
//!   `permanent` (the error duroxide got);
//! - `error`: the error's message, when there was one;
//! - `delivery_attempt`: for a fetch that found work, the item's attempt count.
//!
//! Retries and resolved ambiguous commits are events inside these spans
//! (see [`crate::retry`] and [`crate::engine`]). Nothing here logs at
//! `INFO` or above: a span is only recorded by a subscriber that asks for
//! `duropg=debug`.

use duroxide::providers::ProviderError;
use std::future::Future;
use tracing::{Instrument, Span};

/// The span of one call: `call_span!("name")` or `call_span!("name", instance)`.
#[macro_export]
macro_rules! call_span {
    ($op:literal) => {
        tracing::debug_span!(
            target: "duropg",
            $op,
            operation = $op,
            instance = tracing::field::Empty,
            attempts = tracing::field::Empty,
            outcome = tracing::field::Empty,
            error = tracing::field::Empty,
            delivery_attempt = tracing::field::Empty,
        )
    };
    ($op:literal, $instance:expr) => {{
        let span = $crate::call_span!($op);
        span.record("instance", $instance);
        span
    }};
}
pub use crate::call_span;

/// Run `call` inside `span`, recording its outcome (`ok` on success).
pub async fn traced<T>(span: Span, call: impl Future<Output = Result<T, ProviderError>>) -> Result<T, ProviderError> {
    traced_with(span, call, |_, _| "ok").await
}

/// Run `call` inside `span`; on success `ok(span, value)` records what it
/// found and names the outcome.
pub async fn traced_with<T>(
    span: Span,
    call: impl Future<Output = Result<T, ProviderError>>,
    ok: impl FnOnce(&Span, &T) -> &'static str,
) -> Result<T, ProviderError> {
    let result = call.instrument(span.clone()).await;
    if !span.is_disabled() {
        match &result {
            Ok(value) => {
                span.record("outcome", ok(&span, value));
            }
            Err(e) => {
                span.record("outcome", if e.is_retryable() { "retryable" } else { "permanent" });
                span.record("error", tracing::field::display(e));
            }
        }
    }
    result
}

/// Note on the current span how many attempts a store call took.
pub(crate) fn record_attempts(attempts: u32) {
    Span::current().record("attempts", attempts);
}
