//! Events on Kafka, against a real Kafka-protocol broker: tansu (a
//! Kafka-compatible broker from crates.io, in-memory storage), built once by
//! `.ci/kafka.sh` into a cache outside the repository, and started here, one
//! broker per test on a free loopback port (`SMARTMART_TEST_TANSU` names
//! another binary). The service is the real `smartmart serve` binary with
//! `SMARTMART_EVENT_SINK=kafka`; the topics are read back with rskafka, as a
//! consumer would. Each test has a topic prefix of its own.
//!
//! When the broker binary is missing or does not start, the tests fail and
//! say that they did not run and how to build it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rskafka::BackoffConfig;
use rskafka::client::partition::{OffsetAt, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use serde_json::{Value, json};
use smartmart::domain::status::EventKind;
use smartmart::events::{EventSink, KafkaSettings, KafkaSink, SinkEvent};
use smartmart::test_support::{HEADER_EVENT_ID, HEADER_EVENT_TYPE, partition_for};
use tempfile::TempDir;

use crate::support::server::{ADMIN_KEY, MOBILE_KEY, PARTNER_KEY, WEB_KEY, token};
use crate::support::{SECRET, bundled_plugins, demo_dataset};

/// The tansu version `.ci/kafka.sh` builds.
const TANSU_VERSION: &str = "0.6.0";
/// Partitions of the topics the service creates in these tests.
const PARTITIONS: usize = 3;
/// The demo data set's active customers.
const CUSTOMERS: [&str; 4] = ["C-1001", "C-1002", "C-1003", "C-1005"];

fn tansu_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SMARTMART_TEST_TANSU") {
        return path.into();
    }
    let tools = std::env::var_os("SMARTMART_TOOLS").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/smartmart-tools")
    });
    tools.join(format!("tansu-{TANSU_VERSION}/bin/tansu"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A tansu broker on a loopback port, storage in memory; killed on drop.
struct Broker {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: TempDir,
}

impl Broker {
    /// Starts a broker on `port` and waits until it answers metadata
    /// requests; a broker that cannot be started fails the test.
    async fn start_on(port: u16) -> Broker {
        let binary = tansu_binary();
        let not_run = |why: String| -> ! {
            panic!(
                "THE KAFKA TEST DID NOT RUN: {why}.\n  Build the test broker (once, cached outside the repository) with \
                 `bash .ci/kafka.sh` (`cargo xtask test` and .ci/run do), or point SMARTMART_TEST_TANSU at a tansu binary."
            )
        };
        if !binary.is_file() {
            not_run(format!("no Kafka-protocol broker at {}", binary.display()));
        }
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("tansu.log");
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&binary)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("tansu.err")).unwrap())
            .spawn()
            .unwrap_or_else(|e| not_run(format!("starting {} failed: {e}", binary.display())));
        let mut broker = Broker { child, port, log, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = broker.child.try_wait().unwrap() {
                not_run(format!("the broker {} exited at start ({status}): {}", binary.display(), broker.logs()));
            }
            if tokio::time::timeout(Duration::from_secs(5), broker.try_client()).await.is_ok_and(|c| c.is_ok()) {
                return broker;
            }
            if Instant::now() > deadline {
                not_run(format!("the broker on port {port} never answered: {}", broker.logs()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn start() -> Broker {
        Broker::start_on(free_port()).await
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn logs(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.log.with_file_name(name)).unwrap_or_default();
        format!("{}{}", read("tansu.log"), read("tansu.err"))
    }

    async fn try_client(&self) -> rskafka::client::error::Result<Client> {
        let backoff = BackoffConfig { deadline: Some(Duration::from_secs(3)), ..BackoffConfig::default() };
        ClientBuilder::new(vec![self.address()]).client_id("smartmart-test").backoff_config(backoff).build().await
    }

    async fn client(&self) -> Client {
        self.try_client().await.unwrap_or_else(|e| panic!("a client of the broker: {e}; {}", self.logs()))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One record as a consumer reads it.
#[derive(Debug, Clone)]
struct Consumed {
    topic: String,
    partition: i32,
    offset: i64,
    key: String,
    event_id: String,
    event_type: String,
    body: Value,
}

/// Every record of `topic`, partition by partition, in offset order.
async fn consume(client: &Client, topic: &str) -> Vec<Consumed> {
    let topics = client.list_topics().await.expect("listing the topics");
    let Some(found) = topics.into_iter().find(|t| t.name == topic) else { return Vec::new() };
    let mut out = Vec::new();
    for partition in found.partitions {
        let reader =
            client.partition_client(topic, partition, UnknownTopicHandling::Retry).await.expect("a partition client");
        let end = reader.get_offset(OffsetAt::Latest).await.expect("the high watermark");
        let mut offset = reader.get_offset(OffsetAt::Earliest).await.expect("the first offset");
        while offset < end {
            let (records, _) = reader.fetch_records(offset, 1..4 * 1024 * 1024, 500).await.expect("fetching");
            assert!(!records.is_empty(), "{topic}/{partition}: nothing fetched at {offset} below {end}");
            for r in records {
                let header = |name: &str| {
                    let value = r.record.headers.get(name).unwrap_or_else(|| panic!("a record without {name}"));
                    String::from_utf8(value.clone()).expect("a text header")
                };
                out.push(Consumed {
                    topic: topic.to_string(),
                    partition,
                    offset: r.offset,
                    key: String::from_utf8(r.record.key.clone().expect("a keyed record")).expect("a text key"),
                    event_id: header(HEADER_EVENT_ID),
                    event_type: header(HEADER_EVENT_TYPE),
                    body: serde_json::from_slice(r.record.value.as_deref().expect("a value")).expect("a JSON event"),
                });
                offset = r.offset + 1;
            }
        }
    }
    out
}

/// `smartmart serve` with the Kafka sink, as a child process.
struct Service {
    child: Child,
    port: u16,
    dir: TempDir,
    client: reqwest::Client,
}

impl Service {
    /// `timeout_ms`: `SMARTMART_KAFKA_TIMEOUT_MS`.
    async fn start(brokers: &str, prefix: &str, timeout_ms: u64) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_smartmart"))
            .args(["serve", "--demo-data"])
            .arg(demo_dataset())
            .env("SMARTMART_LISTEN", format!("127.0.0.1:{port}"))
            .env("SMARTMART_DATA_DIR", dir.path())
            .env("SMARTMART_PLUGINS_DIR", bundled_plugins())
            .env("SMARTMART_CHANNEL_KEYS", format!("web:{WEB_KEY},mobile:{MOBILE_KEY},partner:{PARTNER_KEY}"))
            .env("SMARTMART_ADMIN_KEY", ADMIN_KEY)
            .env("SMARTMART_IDENTITY_SECRET", std::str::from_utf8(SECRET).unwrap())
            .env("SMARTMART_WATCH_PLUGINS", "false")
            .env("SMARTMART_EVENT_SINK", "kafka")
            .env("SMARTMART_KAFKA_BROKERS", brokers)
            .env("SMARTMART_KAFKA_TOPIC_PREFIX", prefix)
            .env("SMARTMART_KAFKA_PARTITIONS", PARTITIONS.to_string())
            .env("SMARTMART_KAFKA_TIMEOUT_MS", timeout_ms.to_string())
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting smartmart serve");
        let mut service = Service { child, port, dir, client: reqwest::Client::new() };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(answer) = service.client.get(service.url("/readyz")).send().await
                && answer.status() == 200
            {
                return service;
            }
            if let Some(status) = service.child.try_wait().unwrap() {
                panic!("the service exited while starting: {status}");
            }
            assert!(Instant::now() < deadline, "the service never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Places an order of `customer` over HTTP; returns (order id, its event ids by type).
    async fn order(&self, customer: &str) -> (String, BTreeMap<String, String>) {
        let cart = self
            .client
            .put(self.url(&format!("/v1/carts/{customer}")))
            .bearer_auth(WEB_KEY)
            .header("x-customer-token", token(customer))
            .json(&json!({"items": [{"sku": "HDMI-2M", "quantity": 1}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(cart.status(), 200, "cart of {customer}");
        let answer = self
            .client
            .post(self.url("/v1/orders"))
            .bearer_auth(WEB_KEY)
            .header("x-customer-token", token(customer))
            .json(&json!({"customer_id": customer, "payment": {"token": "tok_ok"}}))
            .send()
            .await
            .unwrap();
        let status = answer.status();
        let body: Value = answer.json().await.unwrap();
        assert_eq!(status, 201, "the order of {customer} is confirmed: {body}");
        let events = body["events"].as_array().expect("the order's events");
        let events = events
            .iter()
            .map(|e| (e["type"].as_str().unwrap().to_string(), e["id"].as_str().unwrap().to_string()))
            .collect::<BTreeMap<_, _>>();
        assert_eq!(events.len(), 3, "{body}");
        (body["order_id"].as_str().expect("an order id").to_string(), events)
    }

    /// The outbox: (seq, event id, type, state, attempts, last error).
    fn outbox(&self) -> Vec<(i64, String, String, String, i64, Option<String>)> {
        let db = rusqlite::Connection::open_with_flags(
            self.dir.path().join("smartmart.sqlite"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("opening the database");
        db.busy_timeout(Duration::from_secs(5)).unwrap();
        let mut stmt =
            db.prepare("SELECT seq, id, type, state, attempts, last_error FROM outbox ORDER BY seq").unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Waits until `done` holds for the outbox; bounded, so that a sink that
    /// never takes the events fails the test.
    async fn wait_for_outbox(
        &mut self,
        what: &str,
        done: impl Fn(&[(i64, String, String, String, i64, Option<String>)]) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let rows = self.outbox();
            if done(&rows) {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the service exited: {status}");
            }
            assert!(Instant::now() < deadline, "{what}: {rows:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn test_prefix() -> String {
    format!("smartmart.test.{}", hex::encode(rand::random::<[u8; 6]>()))
}

/// Orders of every active demo customer, `rounds` times over.
async fn place_orders(service: &Service, rounds: usize) -> Vec<(String, BTreeMap<String, String>)> {
    let mut placed = Vec::new();
    for _ in 0..rounds {
        for customer in CUSTOMERS {
            placed.push(service.order(customer).await);
        }
    }
    placed
}

/// Every record of the three topics; checks what each record must carry:
/// its type's topic, `event-id` = the body's id, `event-type` = the body's
/// type, the key = the body's order id, and the partition Kafka's default
/// partitioner gives that key.
async fn consume_all(client: &Client, prefix: &str) -> Vec<Consumed> {
    let mut all = Vec::new();
    for &kind in EventKind::ALL {
        let topic = format!("{prefix}.{kind}");
        for record in consume(client, &topic).await {
            assert_eq!(record.event_id, record.body["id"].as_str().unwrap(), "{record:?}");
            assert_eq!(record.event_type, kind.as_str(), "{record:?}");
            assert_eq!(record.body["type"], kind.as_str(), "{record:?}");
            assert_eq!(record.key, record.body["order_id"].as_str().unwrap(), "the key is the order id: {record:?}");
            assert_eq!(
                record.partition as usize,
                partition_for(record.key.as_bytes(), PARTITIONS),
                "the key's partition: {record:?}"
            );
            all.push(record);
        }
    }
    all
}

/// Every event of every placed order is in its topic (at least once, by
/// `event-id`), on its order's key; nothing else is.
fn assert_every_event_arrived(placed: &[(String, BTreeMap<String, String>)], consumed: &[Consumed]) {
    let mut by_id: BTreeMap<&str, Vec<&Consumed>> = BTreeMap::new();
    for record in consumed {
        by_id.entry(&record.event_id).or_default().push(record);
    }
    let mut expected = BTreeSet::new();
    for (order_id, events) in placed {
        for (kind, id) in events {
            let records =
                by_id.get(id.as_str()).unwrap_or_else(|| panic!("{kind} event {id} of {order_id} is missing"));
            assert!(records.iter().all(|r| &r.key == order_id && r.topic.ends_with(kind.as_str())), "{records:?}");
            expected.insert(id.as_str());
        }
    }
    assert_eq!(by_id.keys().copied().collect::<BTreeSet<_>>(), expected, "the topics hold exactly the orders' events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_confirmed_orders_events_reach_their_topics_keyed_by_order_in_outbox_order() {
    let broker = Broker::start().await;
    let prefix = test_prefix();
    // The default timeout: a slow machine must not turn into a failed first attempt.
    let mut service = Service::start(&broker.address(), &prefix, 5_000).await;
    let placed = place_orders(&service, 3).await;
    service.wait_for_outbox("every event delivered", |rows| rows.iter().all(|r| r.3 == "DELIVERED")).await;
    let outbox = service.outbox();
    assert_eq!(outbox.len(), placed.len() * 3);
    // A healthy broker on loopback takes every batch at the first attempt
    // (a retried batch would be overtaken by later events: see below).
    assert!(outbox.iter().all(|r| r.4 == 0), "a delivery to the healthy broker failed: {outbox:?}");

    // The topics as the service creates them.
    let client = broker.client().await;
    let topics = client.list_topics().await.unwrap();
    for &kind in EventKind::ALL {
        let topic = topics.iter().find(|t| t.name == format!("{prefix}.{kind}")).expect("the topic was created");
        assert_eq!(topic.partitions, (0..PARTITIONS as i32).collect(), "{}", topic.name);
    }

    let consumed = consume_all(&client, &prefix).await;
    assert_every_event_arrived(&placed, &consumed);
    // Twelve orders over three partitions: more than one key shares a
    // partition, so the order within a partition says something.
    let used: BTreeSet<i32> = consumed.iter().map(|r| r.partition).collect();
    assert!(used.len() > 1, "the keys all went to one partition: {used:?}");

    // Within each partition, the first copy of each event comes in outbox
    // order for the audit and analytics events (ready when the order
    // commits, delivered in outbox order when no batch had to be retried);
    // fraud events become ready when their checks finish, in any order
    // across orders. Either way one order's records share a partition.
    let seq: BTreeMap<&str, i64> = outbox.iter().map(|r| (r.1.as_str(), r.0)).collect();
    for kind in [EventKind::Audit, EventKind::Analytics] {
        for partition in 0..PARTITIONS as i32 {
            let mut seen = BTreeSet::new();
            let seqs: Vec<i64> = consumed
                .iter()
                .filter(|r| r.event_type == kind.as_str() && r.partition == partition)
                .filter(|r| seen.insert(r.event_id.clone()))
                .map(|r| seq[r.event_id.as_str()])
                .collect();
            assert!(seqs.is_sorted(), "{kind} partition {partition}: outbox seqs {seqs:?} out of order");
        }
    }
    let offsets_ascend = consumed
        .windows(2)
        .all(|w| w[0].topic != w[1].topic || w[0].partition != w[1].partition || w[0].offset < w[1].offset);
    assert!(offsets_ascend, "the consumer reads each partition in offset order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_kafka_down_at_start_orders_confirm_and_every_event_goes_out_once_it_is_up() {
    let port = free_port();
    let prefix = test_prefix();
    // A short timeout: each failing attempt while nothing listens lasts that long.
    let mut service = Service::start(&format!("127.0.0.1:{port}"), &prefix, 1_000).await;

    // Nothing listens: the orders are confirmed as usual, delivery is tried and fails.
    let placed = place_orders(&service, 1).await;
    service
        .wait_for_outbox("delivery attempted and failed", |rows| {
            rows.len() == placed.len() * 3 && rows.iter().any(|r| r.4 > 0)
        })
        .await;
    let rows = service.outbox();
    assert!(rows.iter().all(|r| r.3 != "DELIVERED"), "nothing delivered: {rows:?}");
    let tried: Vec<_> = rows.iter().filter(|r| r.4 > 0).collect();
    assert!(
        tried.iter().all(|r| r.5.as_deref().is_some_and(|e| e.contains("Kafka"))),
        "the error names Kafka: {rows:?}"
    );

    // The broker comes up on that port: the outbox retries deliver every event.
    let broker = Broker::start_on(port).await;
    service.wait_for_outbox("every event delivered", |rows| rows.iter().all(|r| r.3 == "DELIVERED")).await;
    let consumed = consume_all(&broker.client().await, &prefix).await;
    assert_every_event_arrived(&placed, &consumed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_delivery_is_stored_again_and_a_consumer_deduplicates_by_event_id() {
    let broker = Broker::start().await;
    let prefix = test_prefix();
    let settings = KafkaSettings {
        brokers: vec![broker.address()],
        topic_prefix: prefix.clone(),
        partitions: PARTITIONS as i32,
        timeout: Duration::from_secs(5),
        ..KafkaSettings::default()
    };
    let sink = KafkaSink::new(settings.clone()).unwrap();
    let event = |id: &str, order: &str| SinkEvent {
        id: id.into(),
        envelope: json!({"id": id, "type": "audit", "order_id": order, "payload": {}}).to_string(),
    };
    let batch = [event("evt_a", "ord_1"), event("evt_b", "ord_2"), event("evt_c", "ord_1")];
    // A crash after the acks and before the outbox marks: the same batch again.
    sink.deliver(EventKind::Audit, &batch).await.expect("the first delivery");
    let again = KafkaSink::new(settings).unwrap();
    again.deliver(EventKind::Audit, &batch).await.expect("the repeated delivery");

    let consumed = consume(&broker.client().await, &format!("{prefix}.audit")).await;
    // At least once: each event twice, on its order's partition, and one
    // order's events in the order they were handed over, both times.
    let mut copies: BTreeMap<&str, usize> = BTreeMap::new();
    for record in &consumed {
        *copies.entry(&record.event_id).or_default() += 1;
        assert_eq!(record.partition as usize, partition_for(record.key.as_bytes(), PARTITIONS), "{record:?}");
    }
    assert_eq!(copies, BTreeMap::from([("evt_a", 2), ("evt_b", 2), ("evt_c", 2)]));
    let ord_1: Vec<&str> = consumed.iter().filter(|r| r.key == "ord_1").map(|r| r.event_id.as_str()).collect();
    assert_eq!(ord_1, ["evt_a", "evt_c", "evt_a", "evt_c"]);
    // A consumer that keeps the event ids it has seen processes each once.
    let mut seen = BTreeSet::new();
    let processed: Vec<&str> =
        consumed.iter().filter(|r| seen.insert(r.event_id.clone())).map(|r| r.event_id.as_str()).collect();
    assert_eq!(processed.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_topic_keeps_its_partitions_and_a_topic_lost_with_its_broker_is_created_again() {
    let port = free_port();
    let broker = Broker::start_on(port).await;
    let prefix = test_prefix();
    let topic = format!("{prefix}.fraud");
    let settings = KafkaSettings {
        brokers: vec![broker.address()],
        topic_prefix: prefix.clone(),
        partitions: PARTITIONS as i32,
        timeout: Duration::from_secs(5),
        ..KafkaSettings::default()
    };
    let event = |id: &str, order: &str| SinkEvent {
        id: id.into(),
        envelope: json!({"id": id, "type": "fraud", "order_id": order, "payload": {}}).to_string(),
    };
    let batch: Vec<SinkEvent> = (0..20).map(|n| event(&format!("evt_{n}"), &format!("ord_{n}"))).collect();

    // Someone created the topic with 2 partitions: used as it is, keys spread over 2.
    let client = broker.client().await;
    client.controller_client().unwrap().create_topic(&topic, 2, 1, 5_000).await.expect("creating the topic");
    let sink = KafkaSink::new(settings).unwrap();
    sink.deliver(EventKind::Fraud, &batch).await.expect("delivered to the existing topic");
    let topics = client.list_topics().await.unwrap();
    assert_eq!(topics.iter().find(|t| t.name == topic).unwrap().partitions, [0, 1].into());
    let consumed = consume(&client, &topic).await;
    assert_eq!(consumed.len(), 20);
    assert!(consumed.iter().all(|r| r.partition as usize == partition_for(r.key.as_bytes(), 2)), "{consumed:?}");
    drop(client);

    // The broker restarts empty (memory storage): the sink's connection and
    // topic are gone. The first delivery fails (the outbox would retry it)
    // and drops what the sink knew; the next one connects afresh and creates
    // the topic again, with the configured partitions.
    drop(broker);
    let broker = Broker::start_on(port).await;
    let again = [event("evt_after", "ord_after")];
    let mut failures = Vec::new();
    while let Err(e) = sink.deliver(EventKind::Fraud, &again).await {
        failures.push(format!("{e:#}"));
        assert!(failures.len() < 5, "the sink never recovered: {failures:#?}");
    }
    // The restarted broker does not know the topic the sink had checked, so
    // the reset path above did run.
    assert!(!failures.is_empty(), "the first delivery to the empty broker cannot have succeeded");
    assert!(failures.iter().all(|e| e.contains("Kafka at") && e.contains(&topic)), "{failures:#?}");
    let client = broker.client().await;
    let topics = client.list_topics().await.unwrap();
    assert_eq!(topics.iter().find(|t| t.name == topic).unwrap().partitions, (0..PARTITIONS as i32).collect());
    let consumed = consume(&client, &topic).await;
    assert_eq!(consumed.iter().map(|r| r.event_id.as_str()).collect::<Vec<_>>(), ["evt_after"]);
}
