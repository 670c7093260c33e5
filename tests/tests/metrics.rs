//! Observability: duropg's metrics reach a Prometheus exporter installed the
//! way `pg-backend/examples/prometheus.rs` installs it, next to the duroxide
//! runtime's own series; and every `Provider` / `ProviderAdmin` call opens
//! its span with the documented fields.

use duropg_tests::{completed_output, start_item, RuntimeHarness, TestSchema};
use duroxide::providers::{ExecutionMetadata, Provider};
use duroxide::runtime::registry::ActivityRegistry;
use duroxide::{ActivityContext, Event, EventKind, OrchestrationContext, OrchestrationRegistry};
use metrics_exporter_prometheus::PrometheusBuilder;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// A port nobody listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// `GET /metrics` over a plain TCP connection; the response body.
fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to the exporter");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .expect("send the request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "exporter answered {head}");
    body.to_string()
}

/// The value of the first sample of `series` whose labels include all of `labels`.
fn sample(body: &str, series: &str, labels: &[&str]) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(series) && l[series.len()..].starts_with(['{', ' ']))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrape_finds_duropg_series_next_to_the_runtimes() {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .expect("install the Prometheus exporter");

    let activities = ActivityRegistry::builder()
        .register("Greet", |_ctx: ActivityContext, name: String| async move {
            Ok(format!("Hello, {name}!"))
        })
        .build();
    let orchestrations = OrchestrationRegistry::builder()
        .register("Hello", |ctx: OrchestrationContext, name: String| async move {
            ctx.schedule_activity("Greet", name).await
        })
        .build();
    let h = RuntimeHarness::start("metrics_prom", activities, orchestrations).await;
    let status = h.run("prom-1", "Hello", "metrics", Duration::from_secs(60)).await;
    assert_eq!(completed_output(&status), "Hello, metrics!");

    let body = tokio::task::spawn_blocking(move || scrape(addr)).await.expect("scrape");
    for name in [
        duropg::metrics::CLAIMS_TOTAL,
        duropg::metrics::WAKEUPS_SENT_TOTAL,
        duropg::metrics::POOL_CONNECTIONS,
        duropg::metrics::POOL_WAITING,
        duropg::metrics::POOL_WAIT_SECONDS,
        duropg::metrics::LISTENER_CONNECTED,
    ] {
        assert!(body.contains(name), "{name} missing from the scrape:\n{body}");
    }
    for (queue, what) in [("orchestrator", "a turn"), ("worker", "the activity")] {
        let found = sample(
            &body,
            duropg::metrics::CLAIMS_TOTAL,
            &["found=\"true\"", &format!("queue=\"{queue}\"")],
        );
        assert!(
            found.is_some_and(|n| n >= 1.0),
            "no successful {queue} claim counted for {what}:\n{body}"
        );
    }
    let schema = format!("schema=\"{}\"", h.schema.name());
    assert_eq!(
        sample(&body, duropg::metrics::LISTENER_CONNECTED, &[&schema]),
        Some(1.0),
        "the listener of {schema} is connected:\n{body}"
    );
    assert!(
        body.lines().any(|l| l.starts_with("duroxide_")),
        "the runtime's own series are served too:\n{body}"
    );
    h.stop().await;
}

/// One closed span: its name and fields.
#[derive(Debug, Clone)]
struct Closed {
    name: &'static str,
    fields: HashMap<String, String>,
}

#[derive(Default)]
struct Fields(HashMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

/// Spans not yet closed, by id: name and fields.
type OpenSpans = HashMap<u64, (&'static str, HashMap<String, String>)>;

/// Records every span of the `duropg` target when it closes.
#[derive(Clone, Default)]
struct SpanLog {
    open: Arc<Mutex<OpenSpans>>,
    closed: Arc<Mutex<Vec<Closed>>>,
}

impl<S: tracing::Subscriber> Layer<S> for SpanLog {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _ctx: Context<'_, S>) {
        if attrs.metadata().target() != "duropg" {
            return;
        }
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        self.open
            .lock()
            .unwrap()
            .insert(id.into_u64(), (attrs.metadata().name(), fields.0));
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        if let Some((_, fields)) = self.open.lock().unwrap().get_mut(&id.into_u64()) {
            let mut more = Fields::default();
            values.record(&mut more);
            fields.extend(more.0);
        }
    }
    fn on_close(&self, id: Id, _ctx: Context<'_, S>) {
        if let Some((name, fields)) = self.open.lock().unwrap().remove(&id.into_u64()) {
            self.closed.lock().unwrap().push(Closed { name, fields });
        }
    }
}

impl SpanLog {
    fn named(&self, name: &str) -> Vec<Closed> {
        self.closed
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.name == name)
            .cloned()
            .collect()
    }
}

/// The spans of one provider turn and a few admin calls, on one thread
/// (a scoped subscriber sees only its own thread's spans).
#[test]
fn each_call_opens_a_span_with_operation_instance_attempts_and_outcome() {
    let log = SpanLog::default();
    let subscriber = tracing_subscriber::registry().with(
        log.clone()
            .with_filter(tracing_subscriber::filter::Targets::new().with_target("duropg", tracing::Level::DEBUG)),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = tracing::subscriber::set_default(subscriber);
    rt.block_on(async {
        let schema = TestSchema::new("metrics_spans");
        let provider = schema.provider().await;
        provider
            .enqueue_for_orchestrator(start_item("span-1", "{}", None), None)
            .await
            .expect("enqueue");
        let (_, token, _) = provider
            .fetch_orchestration_item(Duration::from_secs(30), Duration::ZERO, None)
            .await
            .expect("fetch")
            .expect("an item");
        let started = Event::with_event_id(
            1,
            "span-1",
            1,
            None,
            EventKind::OrchestrationStarted {
                name: "O".into(),
                version: "1.0.0".into(),
                input: "{}".into(),
                parent_instance: None,
                parent_id: None,
                parent_execution_id: None,
                carry_forward_events: None,
                initial_custom_status: None,
            },
        );
        let metadata = ExecutionMetadata {
            orchestration_name: Some("O".into()),
            orchestration_version: Some("1.0.0".into()),
            ..Default::default()
        };
        provider
            .ack_orchestration_item(&token, 1, vec![started], vec![], vec![], metadata, vec![])
            .await
            .expect("ack");
        // Nothing left: an empty fetch.
        let none = provider
            .fetch_orchestration_item(Duration::from_secs(30), Duration::ZERO, None)
            .await
            .expect("fetch");
        assert!(none.is_none());
        let admin = provider.as_management_capability().expect("admin");
        admin.get_instance_info("span-1").await.expect("info");
        admin.get_system_metrics().await.expect("metrics");
        assert!(admin.get_instance_info("no-such-instance").await.is_err());
    });

    let fetches = log.named("fetch_orchestration_item");
    assert_eq!(fetches.len(), 2, "one span per fetch: {fetches:?}");
    let found = &fetches[0].fields;
    assert_eq!(
        found.get("operation").map(String::as_str),
        Some("fetch_orchestration_item")
    );
    assert_eq!(found.get("instance").map(String::as_str), Some("span-1"));
    assert_eq!(found.get("outcome").map(String::as_str), Some("ok"));
    assert_eq!(found.get("attempts").map(String::as_str), Some("1"));
    assert_eq!(found.get("delivery_attempt").map(String::as_str), Some("1"));
    assert_eq!(fetches[1].fields.get("outcome").map(String::as_str), Some("empty"));

    let enqueue = log.named("enqueue_for_orchestrator");
    assert_eq!(enqueue.len(), 1);
    assert_eq!(enqueue[0].fields.get("instance").map(String::as_str), Some("span-1"));

    let acks = log.named("ack_orchestration_item");
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].fields.get("instance").map(String::as_str), Some("span-1"));
    assert_eq!(acks[0].fields.get("outcome").map(String::as_str), Some("ok"));
    assert!(acks[0].fields.contains_key("attempts"), "{:?}", acks[0]);

    let infos = log.named("get_instance_info");
    assert_eq!(infos.len(), 2);
    assert_eq!(infos[0].fields.get("outcome").map(String::as_str), Some("ok"));
    assert_eq!(
        infos[1].fields.get("instance").map(String::as_str),
        Some("no-such-instance")
    );
    assert_eq!(infos[1].fields.get("outcome").map(String::as_str), Some("permanent"));
    assert!(infos[1].fields.get("error").is_some_and(|e| e.contains("not found")));
    assert_eq!(log.named("get_system_metrics").len(), 1);
}

/// docs/operations.md lists every metric duropg records.
#[test]
fn every_metric_is_documented() {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operations.md"))
        .expect("read docs/operations.md");
    for name in duropg::metrics::ALL {
        assert!(
            docs.contains(&format!("| `{name}` |")),
            "{name} is not in the metrics table of docs/operations.md"
        );
    }
}
