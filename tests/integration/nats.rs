//! Events on NATS JetStream, against the real server (JetStream on
//! 127.0.0.1:4222; `SMARTMART_TEST_NATS_URL` overrides it). Each test has a
//! stream and subject prefix of its own and deletes its stream at the end.
//! A server that does not answer fails the tests, saying how to start it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use async_nats::jetstream::{self, Context};
use futures::StreamExt as _;
use serde_json::Value;
use smartmart::app::Engine;
use smartmart::domain::status::EventKind;
use smartmart::events::{EventSink, NatsSettings, NatsSink, SinkChoice, SinkEvent};
use smartmart::pipeline::Placed;
use smartmart::test_support::STREAM_DESCRIPTION;

use crate::support::{TestEngine, bundled_plugins};

const START_NATS: &str = "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
                          -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log";

fn nats_url() -> String {
    std::env::var("SMARTMART_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A JetStream context on the test server; fails the test when it does not answer.
async fn broker() -> Context {
    let url = nats_url();
    let connect = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(5)).connect(url.as_str());
    match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok(client)) => jetstream::ContextBuilder::new().timeout(Duration::from_secs(10)).build(client),
        Ok(Err(e)) => panic!("the NATS server at {url} does not answer ({e}); start it with:\n  {START_NATS}"),
        Err(_) => panic!("the NATS server at {url} does not answer (timed out); start it with:\n  {START_NATS}"),
    }
}

/// A stream name and subject prefix no other test uses; the stream is
/// deleted on drop (also when the test fails).
pub(crate) struct TestStream {
    pub(crate) settings: NatsSettings,
    broker: Context,
}

impl TestStream {
    pub(crate) async fn new() -> TestStream {
        let broker = broker().await;
        let suffix = hex::encode(rand::random::<[u8; 6]>());
        let settings = NatsSettings {
            url: nats_url(),
            stream: format!("SMARTMART_TEST_{}", suffix.to_uppercase()),
            subject_prefix: format!("smartmart.test.{suffix}"),
            // Not the default, to see that the configured window is the one set.
            duplicate_window: Duration::from_secs(3600),
            timeout: Duration::from_secs(5),
            ..NatsSettings::default()
        };
        TestStream { settings, broker }
    }

    fn choice(&self) -> SinkChoice {
        SinkChoice::Nats(self.settings.clone())
    }

    async fn config(&self) -> StreamConfig {
        let mut stream = self.broker.get_stream(&self.settings.stream).await.expect("the stream exists");
        stream.info().await.expect("stream info").config.clone()
    }

    /// Every message of the stream, read by a pull consumer of its own:
    /// (subject, `Nats-Msg-Id`, the JSON body).
    pub(crate) async fn messages(&self) -> Vec<(String, String, Value)> {
        let mut stream = self.broker.get_stream(&self.settings.stream).await.expect("the stream exists");
        let stored = stream.info().await.expect("stream info").state.messages as usize;
        let consumer = stream
            .create_consumer(pull::Config { ack_policy: jetstream::consumer::AckPolicy::None, ..Default::default() })
            .await
            .expect("a pull consumer");
        let mut out = Vec::new();
        while out.len() < stored {
            let mut batch = consumer.fetch().max_messages(500).messages().await.expect("fetching");
            let before = out.len();
            while let Some(message) = batch.next().await {
                let message = message.expect("a message");
                let id = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Msg-Id"))
                    .map(|v| v.as_str().to_string())
                    .unwrap_or_else(|| panic!("a message without Nats-Msg-Id on {}", message.subject));
                let body: Value = serde_json::from_slice(&message.payload).expect("a JSON event");
                out.push((message.subject.to_string(), id, body));
            }
            assert!(out.len() > before, "the consumer stopped at {} of {stored} messages", out.len());
        }
        out
    }

    /// Messages per event id.
    pub(crate) async fn counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for (subject, id, body) in self.messages().await {
            assert_eq!(body["id"], id.as_str(), "the msg id is the event id");
            let kind = body["type"].as_str().expect("a type");
            assert_eq!(subject, format!("{}.{kind}", self.settings.subject_prefix), "one subject per type");
            *counts.entry(id).or_default() += 1;
        }
        counts
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let name = self.settings.stream.clone();
        // Drop cannot await, and the test's runtime (which drives the test's
        // connection) is blocked here: delete through a connection of its own,
        // on a runtime and thread of their own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(async move {
                match broker().await.delete_stream(&name).await {
                    Ok(_) => {}
                    Err(e) if e.to_string().contains("not found") => {}
                    Err(e) => eprintln!("deleting the test stream {name}: {e}"),
                }
            })
        })
        .join();
    }
}

/// The outbox: (event id, type, state, attempts, last error).
async fn outbox(t: &TestEngine) -> Vec<(String, String, String, i64, Option<String>)> {
    t.query(|c| {
        let mut stmt = c.prepare("SELECT id, type, state, attempts, last_error FROM outbox ORDER BY seq")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?;
        rows.collect()
    })
    .await
}

/// Confirmed orders of three customers, each with its three events.
async fn place_orders(t: &TestEngine) -> Vec<Placed> {
    let mut placed = Vec::new();
    for (customer, sku) in [("C-1001", "HDMI-2M"), ("C-1002", "AIRFRYER-5L"), ("C-1003", "HDMI-2M")] {
        let order = t.order(customer, &[(sku, 1)], "tok_ok", None).await.expect("the order is confirmed");
        assert_eq!(order.events.len(), 3);
        placed.push(order);
    }
    placed
}

/// Delivers until every outbox row is delivered: events that failed wait
/// for their backoff; bounded so that a sink that never takes them fails.
async fn deliver_all(t: &TestEngine) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        t.drain().await;
        let rows = outbox(t).await;
        if rows.iter().all(|r| r.2 == "DELIVERED") {
            return;
        }
        assert!(Instant::now() < deadline, "events still undelivered: {rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_confirmed_orders_three_events_reach_the_stream_exactly_once() {
    let stream = TestStream::new().await;
    let t = TestEngine::start_with(&bundled_plugins(), |s| s.event_sink = stream.choice()).await;
    let placed = place_orders(&t).await;
    deliver_all(&t).await;

    // The stream as the service creates it.
    let config = stream.config().await;
    assert_eq!(config.subjects, [format!("{}.>", stream.settings.subject_prefix)]);
    assert_eq!(config.storage, StorageType::File);
    assert_eq!(config.duplicate_window, Duration::from_secs(3600));
    assert_eq!(config.description.as_deref(), Some(STREAM_DESCRIPTION));

    // Each event of each order once, on its type's subject (checked in `counts`).
    let counts = stream.counts().await;
    for order in &placed {
        for event in &order.events {
            assert_eq!(counts.get(&event.id), Some(&1), "{} event {} of {}", event.kind, event.id, order.order_id);
        }
    }
    let mut outbox_ids: Vec<String> = outbox(&t).await.into_iter().map(|r| r.0).collect();
    outbox_ids.sort();
    assert_eq!(outbox_ids.len(), 9);
    assert_eq!(counts.into_keys().collect::<Vec<_>>(), outbox_ids, "the stream holds exactly the outbox's events");
    // Nothing went to the files: the sink is NATS only.
    assert!(t.event_lines("audit").is_empty());
    t.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_repeated_after_a_crash_is_dropped_by_the_stream() {
    let stream = TestStream::new().await;
    let t = TestEngine::start_with(&bundled_plugins(), |s| s.event_sink = stream.choice()).await;
    let placed = place_orders(&t).await;
    deliver_all(&t).await;
    let first = stream.counts().await;
    assert_eq!(first.len(), 9);

    // A crash after JetStream acknowledged but before the outbox marks
    // committed: the next process finds the rows READY and sends them again.
    let TestEngine { engine, dir } = t;
    let settings = engine.settings().clone();
    engine.shutdown().await;
    let db = dir.path().join("smartmart.sqlite");
    let reset = rusqlite::Connection::open(&db)
        .and_then(|c| c.execute("UPDATE outbox SET state = 'READY', delivered_ms = NULL, next_attempt_ms = 0", []))
        .expect("marking the outbox rows READY again");
    assert_eq!(reset, 9);
    let t = TestEngine { engine: Engine::start(settings).await.expect("restarting"), dir };
    deliver_all(&t).await;
    assert_eq!(stream.counts().await, first, "each event still once");

    // The same batch handed to the sink twice: published twice, stored once.
    let sink = NatsSink::new(stream.settings.clone()).expect("a sink");
    let batch: Vec<SinkEvent> = ["evt_repeat_a", "evt_repeat_b"]
        .map(|id| SinkEvent {
            id: id.into(),
            envelope: serde_json::json!({"id": id, "type": "audit", "order_id": placed[0].order_id}).to_string(),
        })
        .into();
    sink.deliver(EventKind::Audit, &batch).await.expect("the first delivery");
    sink.deliver(EventKind::Audit, &batch).await.expect("the repeated delivery");
    let counts = stream.counts().await;
    assert_eq!(counts.len(), 11);
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    t.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_down_orders_confirm_and_events_wait_until_it_answers() {
    let stream = TestStream::new().await;
    // A port nothing listens on.
    let closed = crate::support::ports::free_port();
    let down = NatsSettings { url: format!("nats://127.0.0.1:{closed}"), ..stream.settings.clone() };
    let t = TestEngine::start_with(&bundled_plugins(), |s| s.event_sink = SinkChoice::Nats(down)).await;

    // Orders are confirmed as usual; delivery is tried and fails.
    let placed = place_orders(&t).await;
    t.drain().await;
    let rows = outbox(&t).await;
    assert_eq!(rows.len(), 9);
    assert!(rows.iter().all(|r| r.2 == "READY"), "nothing delivered: {rows:?}");
    let tried: Vec<_> = rows.iter().filter(|r| r.3 > 0).collect();
    assert!(!tried.is_empty(), "delivery was attempted: {rows:?}");
    assert!(tried.iter().all(|r| r.4.as_deref().is_some_and(|e| e.contains("NATS"))), "the error names NATS: {rows:?}");
    assert!(stream.broker.get_stream(&stream.settings.stream).await.is_err(), "nothing reached the real server");

    // With the right URL, the waiting events go out, each once.
    let TestEngine { engine, dir } = t;
    let mut settings = engine.settings().clone();
    engine.shutdown().await;
    settings.event_sink = stream.choice();
    let t = TestEngine { engine: Engine::start(settings).await.expect("restarting"), dir };
    deliver_all(&t).await;
    let counts = stream.counts().await;
    for order in &placed {
        for event in &order.events {
            assert_eq!(counts.get(&event.id), Some(&1), "{} event of {}", event.kind, order.order_id);
        }
    }
    assert_eq!(counts.len(), 9);
    t.engine.shutdown().await;
}

#[tokio::test]
async fn a_stream_of_someone_else_is_never_changed_and_ours_follows_the_configuration() {
    let stream = TestStream::new().await;
    let name = stream.settings.stream.clone();
    let prefix = stream.settings.subject_prefix.clone();
    let event = |id: &str| SinkEvent { id: id.into(), envelope: format!(r#"{{"id":"{id}","type":"fraud"}}"#) };

    // Someone else's stream that does not capture our subjects: deliveries
    // fail and say why; the stream is left as it was.
    let foreign = StreamConfig {
        name: name.clone(),
        subjects: vec![format!("{prefix}.audit")],
        storage: StorageType::Memory,
        duplicate_window: Duration::from_secs(60),
        ..StreamConfig::default()
    };
    stream.broker.create_stream(foreign.clone()).await.expect("creating the foreign stream");
    let sink = NatsSink::new(stream.settings.clone()).unwrap();
    let error = format!("{:#}", sink.deliver(EventKind::Fraud, &[event("evt_f1")]).await.unwrap_err());
    assert!(error.contains("not created by SmartMart") && error.contains(&format!("add `{prefix}.>`")), "{error}");
    let config = stream.config().await;
    assert_eq!((config.subjects, config.duplicate_window), (foreign.subjects.clone(), foreign.duplicate_window));

    // Someone else's stream that captures them: used, not changed.
    stream
        .broker
        .update_stream(StreamConfig { subjects: vec![format!("{prefix}.*")], ..foreign.clone() })
        .await
        .expect("widening the foreign stream");
    let sink = NatsSink::new(stream.settings.clone()).unwrap();
    sink.deliver(EventKind::Fraud, &[event("evt_f2")]).await.expect("delivered to the foreign stream");
    let config = stream.config().await;
    assert_eq!(config.subjects, [format!("{prefix}.*")]);
    assert_eq!(config.duplicate_window, Duration::from_secs(60));
    assert_eq!(config.description, None);

    // Our own stream with an old duplicate window: brought to the configured one.
    stream
        .broker
        .update_stream(StreamConfig {
            subjects: vec![format!("{prefix}.*")],
            description: Some(STREAM_DESCRIPTION.into()),
            ..foreign
        })
        .await
        .expect("marking the stream as SmartMart's");
    let sink = NatsSink::new(stream.settings.clone()).unwrap();
    sink.deliver(EventKind::Fraud, &[event("evt_f3")]).await.expect("delivered to our stream");
    let config = stream.config().await;
    assert_eq!(config.subjects, [format!("{prefix}.>")]);
    assert_eq!(config.duplicate_window, Duration::from_secs(3600));
    assert_eq!(stream.counts().await.keys().collect::<Vec<_>>(), ["evt_f2", "evt_f3"]);
}
