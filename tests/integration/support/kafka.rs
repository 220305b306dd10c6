//! What the Kafka tests share (`kafka.rs`, `kafka_security.rs`): a real
//! Kafka-protocol broker — tansu (a Kafka-compatible broker from crates.io,
//! in-memory storage, or SQLite for a broker that keeps SCRAM users), built
//! once by `.ci/kafka.sh` into a cache outside the repository and started
//! here, one per test on a free loopback port (`SMARTMART_TEST_TANSU` names
//! another binary) — the real `smartmart serve` binary with
//! `SMARTMART_EVENT_SINK=kafka`, and a consumer reading the topics back with
//! rskafka.
//!
//! When the broker binary is missing or does not start, the tests fail and
//! say that they did not run and how to build it.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rskafka::BackoffConfig;
use rskafka::client::partition::{OffsetAt, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};
use serde_json::{Value, json};
use smartmart::domain::status::EventKind;
use smartmart::events::SaslMechanism;
use smartmart::test_support::{HEADER_EVENT_ID, HEADER_EVENT_TYPE, partition_for};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

use crate::support::server::{ADMIN_KEY, MOBILE_KEY, PARTNER_KEY, WEB_KEY, token};
use crate::support::service::free_port;
use crate::support::{SECRET, bundled_plugins, demo_dataset};

/// The tansu version `.ci/kafka.sh` builds, and its features as they are in
/// the name of its directory.
const TANSU_VERSION: &str = "0.6.0";
const TANSU_FEATURES: &str = "dynostore-libsql";
/// Partitions of the topics the service creates in these tests.
pub const PARTITIONS: usize = 3;
/// The demo data set's active customers.
const CUSTOMERS: [&str; 4] = ["C-1001", "C-1002", "C-1003", "C-1005"];
/// The service's log, in its data dir.
const LOG_FILE: &str = "smartmart.log";

fn tansu_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SMARTMART_TEST_TANSU") {
        return path.into();
    }
    let tools = std::env::var_os("SMARTMART_TOOLS").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/smartmart-tools")
    });
    tools.join(format!("tansu-{TANSU_VERSION}-{TANSU_FEATURES}/bin/tansu"))
}

/// Fails the test saying that the Kafka test did not run, and how to build
/// the broker.
fn not_run(why: String) -> ! {
    panic!(
        "THE KAFKA TEST DID NOT RUN: {why}.\n  Build the test broker (once, cached outside the repository) with \
         `bash .ci/kafka.sh` (`cargo xtask test` and .ci/run do), or point SMARTMART_TEST_TANSU at a tansu binary."
    )
}

/// A SCRAM user a test broker keeps.
#[derive(Debug, Clone, Copy)]
pub struct ScramUser {
    pub mechanism: SaslMechanism,
    pub name: &'static str,
    pub password: &'static str,
}

impl ScramUser {
    /// The mechanism as `tansu user create --mechanism` names it.
    fn tansu_mechanism(&self) -> &'static str {
        match self.mechanism {
            SaslMechanism::ScramSha256 => "scram256",
            SaslMechanism::ScramSha512 => "scram512",
            SaslMechanism::Plain => panic!("tansu 0.6.0 has no PLAIN: its SASL library is built without it"),
        }
    }

    /// rskafka's configuration for a consumer logging in as this user.
    pub fn rskafka_config(&self) -> SaslConfig {
        let credentials = Credentials::new(self.name.into(), self.password.into());
        match self.mechanism {
            SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(credentials),
            SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(credentials),
            SaslMechanism::Plain => SaslConfig::Plain(credentials),
        }
    }
}

/// How a test broker is started.
#[derive(Debug, Clone, Copy, Default)]
pub struct BrokerOptions {
    /// The port it listens on; `None`: a free one.
    pub port: Option<u16>,
    /// The port it tells clients to reach it at (its advertised listener on
    /// 127.0.0.1), e.g. a TLS front's; `None`: its own.
    pub advertised_port: Option<u16>,
    /// Every client must log in with SASL first (`--authentication`).
    pub authentication: bool,
    /// The SCRAM users it keeps. Empty: storage in memory (which keeps no
    /// SCRAM credentials); otherwise storage in an SQLite file, where they
    /// are created before the broker starts (see [`Broker::start_with`]).
    pub scram_users: &'static [ScramUser],
}

/// A tansu broker on a loopback port, storage in memory (or SQLite, for
/// SCRAM users); killed on drop.
pub struct Broker {
    child: Child,
    port: u16,
    authentication: bool,
    /// Its output, `<stem>.log` and `<stem>.err` in `dir`.
    stem: &'static str,
    dir: Arc<TempDir>,
}

impl Broker {
    /// A plaintext broker on a free port.
    pub async fn start() -> Broker {
        Broker::start_with(BrokerOptions::default()).await
    }

    /// A plaintext broker on `port`.
    pub async fn start_on(port: u16) -> Broker {
        Broker::start_with(BrokerOptions { port: Some(port), ..BrokerOptions::default() }).await
    }

    /// Starts a broker and waits until it answers metadata requests; a
    /// broker that cannot be started fails the test.
    ///
    /// With SCRAM users it is started twice on one SQLite file: first
    /// without authentication, to create the users with `tansu user create`
    /// (a request tansu takes only from a logged-in client once
    /// `--authentication` is on), then as asked.
    pub async fn start_with(options: BrokerOptions) -> Broker {
        let port = options.port.unwrap_or_else(free_port);
        let advertised_port = options.advertised_port.unwrap_or(port);
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let storage = if options.scram_users.is_empty() { "memory://tansu/" } else { "sqlite://tansu.db" };
        if !options.scram_users.is_empty() {
            let setup = Broker::spawn(&dir, "tansu-setup", port, advertised_port, storage, false).await;
            for user in options.scram_users {
                setup.create_user(user);
            }
        }
        Broker::spawn(&dir, "tansu", port, advertised_port, storage, options.authentication).await
    }

    /// Starts the broker binary in `dir` (where an SQLite `storage` is) and
    /// waits until it answers.
    async fn spawn(
        dir: &Arc<TempDir>,
        stem: &'static str,
        port: u16,
        advertised_port: u16,
        storage: &str,
        authentication: bool,
    ) -> Broker {
        let binary = tansu_binary();
        if !binary.is_file() {
            not_run(format!("no Kafka-protocol broker at {}", binary.display()));
        }
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = format!("tcp://127.0.0.1:{advertised_port}");
        let output = |extension: &str| std::fs::File::create(dir.path().join(format!("{stem}.{extension}"))).unwrap();
        let child = Command::new(&binary)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &advertised])
            .args(["--storage-engine", storage])
            .args(authentication.then_some("--authentication"))
            .current_dir(dir.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(output("log"))
            .stderr(output("err"))
            .spawn()
            .unwrap_or_else(|e| not_run(format!("starting {} failed: {e}", binary.display())));
        let mut broker = Broker { child, port, authentication, stem, dir: Arc::clone(dir) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = broker.child.try_wait().unwrap() {
                not_run(format!("the broker {} exited at start ({status}): {}", binary.display(), broker.logs()));
            }
            if tokio::time::timeout(Duration::from_secs(5), broker.answers()).await.unwrap_or(false) {
                return broker;
            }
            if Instant::now() > deadline {
                not_run(format!("the broker on port {port} never answered: {}", broker.logs()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates `user` with tansu's own command, which sends Kafka's
    /// AlterUserScramCredentials request to this broker.
    fn create_user(&self, user: &ScramUser) {
        let output = Command::new(tansu_binary())
            .args(["user", "create", "--broker", &format!("tcp://{}", self.address())])
            .args(["--mechanism", user.tansu_mechanism(), user.name, user.password])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| not_run(format!("running `tansu user create` failed: {e}")));
        assert!(
            output.status.success(),
            "`tansu user create {}` failed ({}): {}{}\n{}",
            user.name,
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.logs()
        );
    }

    /// Where it listens (plaintext), `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn logs(&self) -> String {
        let read = |extension: &str| {
            std::fs::read_to_string(self.dir.path().join(format!("{}.{extension}", self.stem))).unwrap_or_default()
        };
        format!("{}{}", read("log"), read("err"))
    }

    /// Whether it answers: a metadata request, or for a broker that requires
    /// a login (which it refuses before one) an ApiVersions request.
    async fn answers(&self) -> bool {
        if self.authentication { self.answers_api_versions().await } else { self.try_client().await.is_ok() }
    }

    async fn try_client(&self) -> rskafka::client::error::Result<Client> {
        let backoff = BackoffConfig { deadline: Some(Duration::from_secs(3)), ..BackoffConfig::default() };
        ClientBuilder::new(vec![self.address()]).client_id("smartmart-test").backoff_config(backoff).build().await
    }

    /// Sends an ApiVersions request (v0, empty body) in the Kafka protocol's
    /// own framing; true when the answer's error code is 0.
    async fn answers_api_versions(&self) -> bool {
        const API_VERSIONS: i16 = 18;
        let Ok(mut stream) = TcpStream::connect(self.address()).await else { return false };
        let client_id = b"smartmart-test";
        // Request header v1: key, version, correlation id, client id.
        let mut request = Vec::new();
        request.extend(API_VERSIONS.to_be_bytes());
        request.extend(0i16.to_be_bytes());
        request.extend(1i32.to_be_bytes());
        request.extend((client_id.len() as i16).to_be_bytes());
        request.extend(client_id);
        let mut frame = (request.len() as i32).to_be_bytes().to_vec();
        frame.extend(request);
        if stream.write_all(&frame).await.is_err() {
            return false;
        }
        let Ok(length) = stream.read_i32().await else { return false };
        let mut response = vec![0; length.max(0) as usize];
        // Response header v0 (the correlation id), then the error code.
        stream.read_exact(&mut response).await.is_ok() && response.get(4..6) == Some(&[0, 0][..])
    }

    /// A client of this broker (its own port; for one that advertises
    /// another or requires a login, see [`client_of`]).
    pub async fn client(&self) -> Client {
        self.try_client().await.unwrap_or_else(|e| panic!("a client of the broker: {e}; {}", self.logs()))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("the test broker's log:\n{}", self.logs());
        }
    }
}

/// A client of `brokers` over TLS: a consumer of a broker behind a TLS front.
pub async fn client_of(brokers: &str, tls: Arc<rustls::ClientConfig>) -> Client {
    build_consumer(brokers, consumer_builder(brokers).tls_config(tls)).await
}

/// A client of `brokers` logged in as `user`: a consumer of a broker that
/// requires a login.
pub async fn scram_client_of(brokers: &str, user: &ScramUser) -> Client {
    build_consumer(brokers, consumer_builder(brokers).sasl_config(user.rskafka_config())).await
}

fn consumer_builder(brokers: &str) -> ClientBuilder {
    let backoff = BackoffConfig { deadline: Some(Duration::from_secs(5)), ..BackoffConfig::default() };
    ClientBuilder::new(vec![brokers.to_string()]).client_id("smartmart-test").backoff_config(backoff)
}

async fn build_consumer(brokers: &str, builder: ClientBuilder) -> Client {
    builder.build().await.unwrap_or_else(|e| panic!("a client of {brokers}: {e}"))
}

/// One record as a consumer reads it.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub event_id: String,
    pub event_type: String,
    pub body: Value,
}

/// Every record of `topic`, partition by partition, in offset order.
pub async fn consume(client: &Client, topic: &str) -> Vec<Consumed> {
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

/// `smartmart serve` with the Kafka sink, as a child process; its log
/// (`RUST_LOG=warn`) goes to a file ([`Service::log`]).
pub struct Service {
    child: Child,
    port: u16,
    dir: TempDir,
    client: reqwest::Client,
}

impl Service {
    /// `timeout_ms`: `SMARTMART_KAFKA_TIMEOUT_MS`.
    pub async fn start(brokers: &str, prefix: &str, timeout_ms: u64) -> Service {
        Service::start_with(brokers, prefix, timeout_ms, std::iter::empty::<(&str, &str)>()).await
    }

    /// With more settings in the environment (TLS, SASL).
    pub async fn start_with<K: AsRef<OsStr>, V: AsRef<OsStr>>(
        brokers: &str,
        prefix: &str,
        timeout_ms: u64,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join(LOG_FILE)).expect("the service's log file");
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
            .envs(env)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
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
                panic!("the service exited while starting: {status}\n{}", service.log());
            }
            assert!(Instant::now() < deadline, "the service never became ready\n{}", service.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// What the service logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(LOG_FILE)).unwrap_or_default()
    }

    /// Places an order of `customer` over HTTP; returns (order id, its event ids by type).
    pub async fn order(&self, customer: &str) -> (String, BTreeMap<String, String>) {
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
    pub fn outbox(&self) -> Vec<(i64, String, String, String, i64, Option<String>)> {
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
    pub async fn wait_for_outbox(
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
                panic!("the service exited: {status}\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "{what}: {rows:?}\n{}", self.log());
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

pub fn test_prefix() -> String {
    format!("smartmart.test.{}", hex::encode(rand::random::<[u8; 6]>()))
}

/// Orders of every active demo customer, `rounds` times over.
pub async fn place_orders(service: &Service, rounds: usize) -> Vec<(String, BTreeMap<String, String>)> {
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
pub async fn consume_all(client: &Client, prefix: &str) -> Vec<Consumed> {
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
pub fn assert_every_event_arrived(placed: &[(String, BTreeMap<String, String>)], consumed: &[Consumed]) {
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
