//! The Kafka sink: each event is produced to the topic `<prefix>.<type>`
//! (`audit`, `analytics`, `fraud`) with the order id as the record key and
//! the event id and type as headers (`event-id`, `event-type`); the value
//! is the envelope's JSON. A batch counts as delivered only once the
//! partition leaders acknowledged every record with `acks = -1` (all
//! in-sync replicas have it).
//!
//! At least once, in order per order: the key chooses the partition the way
//! Kafka's Java producer does by default (murmur2 of the key, modulo the
//! partition count), so the events of one order in one topic share a
//! partition and a consumer reads them in the order they were produced. A
//! batch is produced partition by partition, each partition's records in
//! outbox order and in requests sent one after the other, so a failure
//! never lets later records of a partition overtake earlier ones. Kafka has
//! no duplicate window for plain producers: a crash between the acks and
//! the outbox marks, a lost ack or a batch that failed half-way makes the
//! dispatcher produce the same events again, and the topic then holds them
//! twice. Consumers deduplicate by the `event-id` header.
//!
//! The client is `rskafka` (pure Rust, tokio): no C library to build or link
//! (rdkafka would need a newer librdkafka than the distribution's, or its
//! `cmake-build` feature compiling one), and it exposes exactly what the sink
//! needs: partition-level produce with `acks = -1`, topic creation, metadata.
//! It has no partitioner, hence `partition_for` below (Kafka's murmur2, the
//! same partition a Java or librdkafka producer chooses for the same key and
//! partition count with their default partitioner, `murmur2_random` in librdkafka).
//!
//! A broker that is down never holds up an order: events wait in the
//! outbox. Connecting, topic checks and each produce are bounded by the
//! timeout, so a dispatcher pass fails fast and backs off; any failure
//! drops the connection and the topics' metadata, and the next attempt
//! starts afresh (a leader moved, a topic was deleted or grew partitions).
//!
//! The topics are created at the first connection when missing, with the
//! configured partition count and replication factor. An existing topic is
//! used as it is (Kafka topics carry no owner mark; its partition count
//! decides where keys go and is logged).
//!
//! TLS (`kafka/tls.rs`) and SASL (`kafka/sasl.rs`) apply to every connection rskafka
//! opens, the bootstrap brokers' and the partition leaders'. A refusal an
//! operator acts on — a certificate not trusted or not for the host, SASL
//! credentials or a mechanism the broker refused — is named ahead of
//! rskafka's text in the error ([`Refusal`]), so the log line says it first.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rskafka::BackoffConfig;
use rskafka::client::error::{Error as ClientError, ProtocolError};
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;
use tokio::sync::Mutex;

use super::{EventSink, SinkEvent};
use crate::domain::status::EventKind;
use crate::store::outbox::SinkPosition;

mod refusal;
mod sasl;
mod tls;

pub use refusal::Refusal;
pub use sasl::{KafkaSasl, SaslMechanism};
use tls::BrokerTls;
pub use tls::{ClientCertificate, KafkaTls};

/// The record headers every event carries.
pub const HEADER_EVENT_ID: &str = "event-id";
pub const HEADER_EVENT_TYPE: &str = "event-type";
pub const HEADER_CONTENT_TYPE: &str = "content-type";

/// The most record bytes (keys, values, headers) one produce request
/// carries: below Kafka's default `message.max.bytes` (1 MiB), so a
/// dispatcher batch of a thousand audit events goes out as a few requests
/// instead of one the broker refuses.
const MAX_REQUEST_BYTES: usize = 512 * 1024;

/// Where and how events are produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    /// Bootstrap brokers, `host:port` each.
    pub brokers: Vec<String>,
    /// Topics are `<prefix>.audit`, `<prefix>.analytics`, `<prefix>.fraud`.
    pub topic_prefix: String,
    /// Partitions of a topic the sink creates.
    pub partitions: i32,
    /// Replication factor of a topic the sink creates.
    pub replication_factor: i16,
    /// Bounds connecting, each topic check or creation and each produce.
    pub timeout: Duration,
    /// TLS to the brokers; `None`: plaintext.
    pub tls: Option<KafkaTls>,
    /// SASL authentication; `None`: none.
    pub sasl: Option<KafkaSasl>,
}

impl Default for KafkaSettings {
    fn default() -> KafkaSettings {
        KafkaSettings {
            brokers: vec!["127.0.0.1:9092".into()],
            topic_prefix: "smartmart.events".into(),
            partitions: 3,
            replication_factor: 1,
            timeout: Duration::from_secs(5),
            tls: None,
            sasl: None,
        }
    }
}

/// Kafka's longest topic name.
const MAX_TOPIC_LEN: usize = 249;

impl KafkaSettings {
    /// Parses `SMARTMART_KAFKA_BROKERS`: `host:port` entries, comma-separated.
    pub fn parse_brokers(text: &str) -> Vec<String> {
        text.split(',').map(str::trim).filter(|b| !b.is_empty()).map(str::to_string).collect()
    }

    /// The brokers as configured, for logs and errors.
    pub fn display_brokers(&self) -> String {
        self.brokers.join(",")
    }

    /// The topic events of type `kind` are produced to.
    pub fn topic(&self, kind: EventKind) -> String {
        format!("{}.{kind}", self.topic_prefix)
    }

    /// Checks every value; the errors name the setting.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.brokers.is_empty() {
            bail!("SMARTMART_KAFKA_BROKERS must name at least one broker as host:port");
        }
        for broker in &self.brokers {
            let port = broker.rsplit_once(':').map(|(host, port)| (host, port.parse::<u16>()));
            if !matches!(port, Some((host, Ok(port))) if !host.is_empty() && port > 0) {
                bail!("SMARTMART_KAFKA_BROKERS: `{broker}` is not host:port");
            }
        }
        // Kafka's own rule for topic names: ASCII letters, digits, `.`, `_`, `-`.
        let legal = |t: &str| t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        let longest = EventKind::ALL.iter().map(|&k| self.topic(k).len()).max().unwrap_or(0);
        if self.topic_prefix.is_empty() || !legal(&self.topic_prefix) || longest > MAX_TOPIC_LEN {
            bail!(
                "SMARTMART_KAFKA_TOPIC_PREFIX must be ASCII letters, digits, `.`, `_` and `-`, and the topic names \
                 at most {MAX_TOPIC_LEN} characters, got `{}`",
                self.topic_prefix
            );
        }
        if self.partitions < 1 {
            bail!("SMARTMART_KAFKA_PARTITIONS must be at least 1, got {}", self.partitions);
        }
        if self.replication_factor < 1 {
            bail!("SMARTMART_KAFKA_REPLICATION_FACTOR must be at least 1, got {}", self.replication_factor);
        }
        if self.timeout.is_zero() {
            bail!("SMARTMART_KAFKA_TIMEOUT_MS must be positive");
        }
        if let Some(sasl) = &self.sasl {
            sasl.validate()?;
        }
        Ok(())
    }
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, &b) in tail.iter().enumerate().rev() {
            h ^= u32::from(b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of `key` among `partitions`, as Kafka's default
/// partitioner chooses it for a keyed record: `toPositive(murmur2(key)) % n`.
pub fn partition_for(key: &[u8], partitions: usize) -> usize {
    (murmur2(key) & 0x7fff_ffff) as usize % partitions.max(1)
}

/// One topic, checked: a client per partition, in partition order.
struct TopicClients {
    name: String,
    partitions: Vec<Arc<PartitionClient>>,
}

#[derive(Default)]
struct Connection {
    client: Option<Arc<Client>>,
    topics: HashMap<EventKind, Arc<TopicClients>>,
}

/// Produces events to Kafka (see the module documentation).
pub struct KafkaSink {
    settings: KafkaSettings,
    /// Built from `settings.tls` at start.
    tls: Option<BrokerTls>,
    /// The connection once made, and the topics checked on it. Held across
    /// connecting, so one attempt runs at a time.
    state: Mutex<Connection>,
}

impl KafkaSink {
    /// A sink that connects on its first use (`connect_now` or a delivery):
    /// nothing here waits for the broker. The TLS files are read now, so a
    /// bad one fails the start.
    pub fn new(settings: KafkaSettings) -> anyhow::Result<KafkaSink> {
        settings.validate()?;
        let tls = settings.tls.as_ref().map(BrokerTls::new).transpose()?;
        if tls.is_none() && settings.sasl.as_ref().is_some_and(|s| s.mechanism == SaslMechanism::Plain) {
            tracing::warn!(
                brokers = %settings.display_brokers(),
                "Kafka SASL PLAIN without TLS: the password crosses the network in the clear; set \
                 SMARTMART_KAFKA_TLS=required or SMARTMART_KAFKA_CA_FILE, or use SCRAM"
            );
        }
        Ok(KafkaSink { settings, tls, state: Mutex::default() })
    }

    pub fn settings(&self) -> &KafkaSettings {
        &self.settings
    }

    /// Connects and checks (or creates) the three topics now; for start-up,
    /// off the path that serves orders. Failing here only means the events wait.
    pub async fn connect_now(&self) -> anyhow::Result<()> {
        for &kind in EventKind::ALL {
            self.topic(kind).await?;
        }
        Ok(())
    }

    /// The topic of `kind`, connected and checked; bounded by the timeout.
    async fn topic(&self, kind: EventKind) -> anyhow::Result<Arc<TopicClients>> {
        let mut state = self.state.lock().await;
        if let Some(topic) = state.topics.get(&kind) {
            return Ok(topic.clone());
        }
        let brokers = self.settings.display_brokers();
        let name = self.settings.topic(kind);
        let timeout = self.settings.timeout;
        let checked = tokio::time::timeout(timeout * 3, async {
            let client = match &state.client {
                Some(client) => client.clone(),
                None => {
                    let client = Arc::new(self.connect().await?);
                    state.client = Some(client.clone());
                    client
                }
            };
            self.check_topic(&client, &name).await
        })
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out after {:?}", timeout * 3)));
        match checked {
            Ok(topic) => {
                let topic = Arc::new(topic);
                state.topics.insert(kind, topic.clone());
                Ok(topic)
            }
            Err(e) => {
                *state = Connection::default();
                Err(self.explained(e).context(format!("Kafka at {brokers}: preparing the topic {name}")))
            }
        }
    }

    async fn connect(&self) -> anyhow::Result<Client> {
        let timeout = self.settings.timeout;
        // rskafka retries connection and leader errors by itself, forever by
        // default: the deadline bounds each operation, so that a pass fails
        // and the dispatcher's backoff (per event, recorded in the outbox) takes over.
        let backoff = BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            base: 2.0,
            deadline: Some(timeout),
        };
        let mut builder =
            ClientBuilder::new(self.settings.brokers.clone()).client_id("smartmart").backoff_config(backoff);
        if let Some(tls) = &self.tls {
            // A refusal remembered from an earlier attempt is not this one's.
            tls.take_refusal();
            builder = builder.tls_config(tls.config());
        }
        if let Some(sasl) = &self.settings.sasl {
            builder = builder.sasl_config(sasl.rskafka_config());
        }
        let client = builder.build().await.context("connecting")?;
        tracing::info!(brokers = %self.settings.display_brokers(), "connected to Kafka");
        Ok(client)
    }

    /// Looks the topic up, creating it when missing, and opens a client per partition.
    async fn check_topic(&self, client: &Client, name: &str) -> anyhow::Result<TopicClients> {
        let mut partitions = partitions_of(client, name).await?;
        if partitions.is_none() {
            let created = client
                .controller_client()
                .context("a controller client")?
                .create_topic(
                    name,
                    self.settings.partitions,
                    self.settings.replication_factor,
                    i32::try_from(self.settings.timeout.as_millis()).unwrap_or(i32::MAX),
                )
                .await;
            match created {
                Ok(()) => tracing::info!(
                    topic = name,
                    partitions = self.settings.partitions,
                    replication_factor = self.settings.replication_factor,
                    "created the Kafka topic"
                ),
                // Created meanwhile by someone else (another instance): use it.
                Err(ClientError::ServerError { protocol_error: ProtocolError::TopicAlreadyExists, .. }) => {}
                Err(e) => return Err(anyhow::Error::from(e).context(format!("creating the topic {name}"))),
            }
            // A new topic shows in the metadata once its leaders are elected.
            let deadline = tokio::time::Instant::now() + self.settings.timeout;
            while partitions.is_none() {
                if tokio::time::Instant::now() >= deadline {
                    bail!("the topic {name} was created but does not show in the brokers' metadata yet");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                partitions = partitions_of(client, name).await?;
            }
        }
        let partitions = partitions.unwrap_or_default();
        if partitions.is_empty() || partitions.iter().enumerate().any(|(i, &p)| p != i as i32) {
            bail!("the topic {name} has partitions {partitions:?}, not 0..n");
        }
        if partitions.len() != self.settings.partitions as usize {
            tracing::info!(
                topic = name,
                partitions = partitions.len(),
                configured = self.settings.partitions,
                "the Kafka topic exists with another partition count; keys are spread over the partitions it has"
            );
        }
        let mut clients = Vec::with_capacity(partitions.len());
        for partition in partitions {
            let partition_client = client
                .partition_client(name, partition, UnknownTopicHandling::Retry)
                .await
                .with_context(|| format!("finding the leader of {name} partition {partition}"))?;
            clients.push(Arc::new(partition_client));
        }
        Ok(TopicClients { name: name.to_string(), partitions: clients })
    }

    /// Forgets the connection and every topic checked on it.
    async fn reset(&self) {
        *self.state.lock().await = Connection::default();
    }

    /// `error` with the brokers' [`Refusal`] ahead of it, when that is why it failed.
    fn explained(&self, error: anyhow::Error) -> anyhow::Error {
        let refusal = self
            .tls
            .as_ref()
            .and_then(BrokerTls::take_refusal)
            .or_else(|| self.settings.sasl.as_ref().and_then(|sasl| sasl.refusal(&format!("{error:#}"))));
        match refusal {
            Some(refusal) => error.context(refusal),
            None => error,
        }
    }
}

/// The partition ids of `topic`, or `None` when it does not exist.
async fn partitions_of(client: &Client, topic: &str) -> anyhow::Result<Option<Vec<i32>>> {
    let topics = client.list_topics().await.context("listing the topics")?;
    Ok(topics.into_iter().find(|t| t.name == topic).map(|t| t.partitions.into_iter().collect()))
}

/// The order id in an event's envelope: the record key.
fn order_id(envelope: &str) -> anyhow::Result<String> {
    #[derive(serde::Deserialize)]
    struct Keyed {
        order_id: String,
    }
    Ok(serde_json::from_str::<Keyed>(envelope).context("an event envelope without an order_id")?.order_id)
}

/// The record of one event.
fn record(kind: EventKind, event: &SinkEvent, timestamp: chrono::DateTime<chrono::Utc>) -> anyhow::Result<Record> {
    let key = order_id(&event.envelope).with_context(|| format!("event {}", event.id))?;
    let headers = BTreeMap::from([
        (HEADER_EVENT_ID.to_string(), event.id.clone().into_bytes()),
        (HEADER_EVENT_TYPE.to_string(), kind.to_string().into_bytes()),
        (HEADER_CONTENT_TYPE.to_string(), b"application/json".to_vec()),
    ]);
    Ok(Record { key: Some(key.into_bytes()), value: Some(event.envelope.clone().into_bytes()), headers, timestamp })
}

/// `records` cut into consecutive runs of at most `MAX_REQUEST_BYTES` (a
/// record larger than that alone), order kept.
fn requests(records: Vec<Record>) -> Vec<Vec<Record>> {
    let mut out: Vec<Vec<Record>> = Vec::new();
    let mut size = 0;
    for record in records {
        let len = record.approximate_size();
        match out.last_mut() {
            Some(last) if size + len <= MAX_REQUEST_BYTES => {
                size += len;
                last.push(record);
            }
            _ => {
                size = len;
                out.push(vec![record]);
            }
        }
    }
    out
}

#[async_trait::async_trait]
impl EventSink for KafkaSink {
    fn name(&self) -> &str {
        "kafka"
    }

    async fn deliver(&self, kind: EventKind, events: &[SinkEvent]) -> anyhow::Result<Option<SinkPosition>> {
        let now = chrono::DateTime::from_timestamp_millis(crate::clock::now_ms()).unwrap_or_default();
        let records: Vec<Record> = events.iter().map(|e| record(kind, e, now)).collect::<anyhow::Result<_>>()?;
        let topic = self.topic(kind).await?;
        // Each partition's records in outbox order.
        let mut by_partition: Vec<Vec<Record>> = (0..topic.partitions.len()).map(|_| Vec::new()).collect();
        for record in records {
            let key = record.key.as_deref().unwrap_or_default();
            by_partition[partition_for(key, topic.partitions.len())].push(record);
        }
        let timeout = self.settings.timeout;
        // Partitions in parallel; within one, requests one after the other.
        let produced = futures::future::try_join_all(by_partition.into_iter().enumerate().map(|(p, records)| {
            let client = topic.partitions[p].clone();
            let name = &topic.name;
            async move {
                for request in requests(records) {
                    let n = request.len();
                    tokio::time::timeout(timeout, client.produce(request, Compression::NoCompression))
                        .await
                        .map_err(|_| anyhow::anyhow!("no acknowledgement within {timeout:?}"))
                        .and_then(|r| r.map_err(anyhow::Error::from))
                        .with_context(|| format!("producing {n} events to {name} partition {p}"))?;
                }
                anyhow::Ok(())
            }
        }))
        .await;
        if let Err(e) = produced {
            // Start afresh next time: the leader may have moved, the topic
            // may be gone or have more partitions.
            self.reset().await;
            return Err(self.explained(e).context(format!("Kafka at {}", self.settings.display_brokers())));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kafka's own test vectors (`UtilsTest.testMurmur2`).
    #[test]
    fn murmur2_matches_kafka() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
        ];
        for (data, expected) in cases {
            assert_eq!(murmur2(data), expected, "{}", String::from_utf8_lossy(data));
        }
    }

    #[test]
    fn one_key_one_partition_and_keys_spread() {
        let keys: Vec<String> = (0..300).map(|n| format!("ord_{n:05}")).collect();
        let mut used = [0usize; 3];
        for key in &keys {
            let p = partition_for(key.as_bytes(), 3);
            assert_eq!(p, partition_for(key.as_bytes(), 3));
            used[p] += 1;
        }
        assert!(used.iter().all(|&n| n > 0), "{used:?}");
        assert!(keys.iter().all(|k| partition_for(k.as_bytes(), 1) == 0));
    }

    #[test]
    fn settings_are_checked_and_name_the_key() {
        assert!(KafkaSettings::default().validate().is_ok());
        let bad = |s: KafkaSettings| s.validate().unwrap_err().to_string();
        for brokers in [vec![], vec!["localhost".to_string()], vec![":9092".into()], vec!["h:port".into()]] {
            let text = bad(KafkaSettings { brokers: brokers.clone(), ..KafkaSettings::default() });
            assert!(text.contains("SMARTMART_KAFKA_BROKERS"), "{brokers:?}: {text}");
        }
        for prefix in ["", "a b", "a/b", "ä", &"x".repeat(240)] {
            let text = bad(KafkaSettings { topic_prefix: prefix.into(), ..KafkaSettings::default() });
            assert!(text.contains("SMARTMART_KAFKA_TOPIC_PREFIX"), "{prefix}: {text}");
        }
        assert!(bad(KafkaSettings { partitions: 0, ..KafkaSettings::default() }).contains("PARTITIONS"));
        assert!(
            bad(KafkaSettings { replication_factor: 0, ..KafkaSettings::default() }).contains("REPLICATION_FACTOR")
        );
        assert!(bad(KafkaSettings { timeout: Duration::ZERO, ..KafkaSettings::default() }).contains("TIMEOUT"));
        let sasl = |username: &str, password: &str| KafkaSettings {
            sasl: Some(KafkaSasl {
                mechanism: SaslMechanism::ScramSha256,
                username: username.into(),
                password: password.into(),
            }),
            ..KafkaSettings::default()
        };
        assert!(sasl("shop", "secret").validate().is_ok());
        assert!(bad(sasl("", "secret")).contains("SMARTMART_KAFKA_SASL_USERNAME"));
        assert!(bad(sasl("shop", "")).contains("SMARTMART_KAFKA_SASL_PASSWORD"));
        assert_eq!(KafkaSettings::parse_brokers(" a:1, b:2 ,,"), ["a:1", "b:2"]);
    }

    #[test]
    fn one_topic_per_event_type_under_the_prefix() {
        let settings = KafkaSettings { topic_prefix: "shop.ev".into(), ..KafkaSettings::default() };
        let topics: Vec<String> = EventKind::ALL.iter().map(|&k| settings.topic(k)).collect();
        assert_eq!(topics, ["shop.ev.audit", "shop.ev.analytics", "shop.ev.fraud"]);
    }

    #[test]
    fn a_record_is_keyed_by_the_order_and_carries_the_event_id() {
        let event = SinkEvent {
            id: "evt_1".into(),
            envelope: r#"{"id":"evt_1","type":"fraud","order_id":"ord_9","payload":{}}"#.into(),
        };
        let record = record(EventKind::Fraud, &event, chrono::DateTime::UNIX_EPOCH).unwrap();
        assert_eq!(record.key.as_deref(), Some(&b"ord_9"[..]));
        assert_eq!(record.value.as_deref(), Some(event.envelope.as_bytes()));
        assert_eq!(record.headers[HEADER_EVENT_ID], b"evt_1");
        assert_eq!(record.headers[HEADER_EVENT_TYPE], b"fraud");
        let keyless = SinkEvent { id: "evt_2".into(), envelope: r#"{"id":"evt_2"}"#.into() };
        let error =
            format!("{:#}", super::record(EventKind::Audit, &keyless, chrono::DateTime::UNIX_EPOCH).unwrap_err());
        assert!(error.contains("evt_2") && error.contains("order_id"), "{error}");
    }

    #[test]
    fn requests_stay_under_the_size_limit_and_keep_the_order() {
        let big = |n: usize| Record {
            key: Some(n.to_string().into_bytes()),
            value: Some(vec![b'x'; 200 * 1024]),
            headers: BTreeMap::new(),
            timestamp: chrono::DateTime::UNIX_EPOCH,
        };
        let split = requests((0..5).map(big).collect());
        assert_eq!(split.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
        let keys: Vec<Vec<u8>> = split.into_iter().flatten().map(|r| r.key.unwrap()).collect();
        assert_eq!(keys, (0..5).map(|n: usize| n.to_string().into_bytes()).collect::<Vec<_>>());
        let huge = Record { value: Some(vec![0; MAX_REQUEST_BYTES + 1]), ..big(9) };
        assert_eq!(requests(vec![big(1), huge, big(2)]).len(), 3);
    }
}
