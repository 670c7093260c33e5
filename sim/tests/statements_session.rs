//! Differential tests of the session statement models (see `support`).

mod support;

use duropg_sim::wire::value::Value;
use support::Both;

#[tokio::test]
async fn transaction_ids_and_notify_agree_with_postgres() {
    let mut both = Both::new("sig_session").await;
    both.step("txid", vec![]).await.expect("txid");
    let ch = Value::Text(both.schema.to_string());
    both.step("notify", vec![ch, Value::Text("o:1:x".into()), Value::Int4(1)])
        .await
        .expect("notify");
    assert_eq!(both.notifies.len(), 1, "the model recorded the notification");
    both.assert_tables_match().await;
}
