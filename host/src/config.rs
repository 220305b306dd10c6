//! `smartmart serve`'s configuration: one struct read from a TOML file
//! (`--config`), the environment (`SMARTMART_*`) and the command line, in
//! increasing precedence. Unknown keys in the file are refused. The doc
//! comments below are the `--help` text.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::app::{EngineSettings, GatewayChoice, RetentionSettings};
use crate::domain::status::Channel;
use crate::events::kafka::{self, KafkaSasl, KafkaTls, SaslMechanism};
use crate::events::nats::{ClientCertificate, NatsAuth, NatsTls};
use crate::events::{KafkaSettings, NatsSettings, SinkChoice};
use crate::http::{ConnectionLimits, Credentials};
use crate::payment::{HttpGatewayOptions, RetryPolicy};

/// Settings of `smartmart serve`. Every field may come from the file, the
/// environment or the command line.
#[derive(Clone, Default, clap::Args, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Address and port to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "SMARTMART_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Data directory: database, event files, module cache [default: ./smartmart-data].
    #[arg(long, env = "SMARTMART_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Commit durability of the store: `full` (an fsync per commit, shared by
    /// every order of a batch: a confirmed order survives a power cut) or
    /// `normal` (survives a crash of the process only) [default: full].
    #[arg(long, env = "SMARTMART_DURABILITY")]
    pub durability: Option<crate::store::Durability>,
    /// PostgreSQL database, `postgres://user[:password]@host[:port]/database`,
    /// shared by every replica of the service; when unset the store is the
    /// embedded SQLite file in the data dir (one process). TLS as libpq's
    /// `?sslmode=` (`disable`, `prefer` [default], `require`, `verify-ca`,
    /// `verify-full`) and `&sslrootcert=` (a PEM file of roots; else the system's).
    /// Or `SMARTMART_DATABASE_URL_FILE`: a file holding it.
    #[arg(long, env = "SMARTMART_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// PostgreSQL connections this process keeps [default: 16].
    #[arg(long, env = "SMARTMART_DATABASE_POOL_SIZE")]
    pub database_pool_size: Option<usize>,
    /// How long an order may stay unfinished before it counts as interrupted
    /// (its process died) and is reconciled, in ms. On SQLite the orders a
    /// crash interrupted are reconciled at start anyway; with replicas on
    /// PostgreSQL another replica finishes them once they are this old [default: 60000].
    #[arg(long, env = "SMARTMART_RECOVERY_AFTER_MS")]
    pub recovery_after_ms: Option<u64>,
    /// Plug-in directory with `manifest.toml` [default: plugins/bundled].
    #[arg(long, env = "SMARTMART_PLUGINS_DIR")]
    pub plugins_dir: Option<PathBuf>,
    /// Sales channel keys: `web:KEY,mobile:KEY,partner:KEY` (keys of 16+ characters).
    /// Or `SMARTMART_CHANNEL_KEYS_FILE`: a file holding it.
    #[arg(long, env = "SMARTMART_CHANNEL_KEYS", hide_env_values = true)]
    pub channel_keys: Option<String>,
    /// Operations key for /v1/admin/* (16+ characters).
    /// Or `SMARTMART_ADMIN_KEY_FILE`: a file holding it.
    #[arg(long, env = "SMARTMART_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// HS256 secret of customer identity tokens (16+ characters).
    /// Or `SMARTMART_IDENTITY_SECRET_FILE`: a file holding it.
    #[arg(long, env = "SMARTMART_IDENTITY_SECRET", hide_env_values = true)]
    pub identity_secret: Option<String>,
    /// Key of the customer pseudonym in analytics events [default: derived from the identity secret].
    /// Or `SMARTMART_PSEUDONYM_KEY_FILE`: a file holding it.
    #[arg(long, env = "SMARTMART_PSEUDONYM_KEY", hide_env_values = true)]
    pub pseudonym_key: Option<String>,
    /// Orders at or above this total are escalated by the bundled fraud check [default: 500000].
    #[arg(long, env = "SMARTMART_FRAUD_THRESHOLD_CENTS")]
    pub fraud_threshold_cents: Option<u64>,
    /// An optional cap on gateway attempts per order, the first included (1..=100)
    /// [default: as many as the retry budget allows].
    #[arg(long, env = "SMARTMART_PAYMENT_MAX_ATTEMPTS")]
    pub payment_max_attempts: Option<u32>,
    /// How long after an order's first payment attempt new attempts may start; below the
    /// stage timeout, whose rest goes to resolving an unknown outcome [default: 2500].
    #[arg(long, env = "SMARTMART_PAYMENT_RETRY_BUDGET_MS")]
    pub payment_retry_budget_ms: Option<u64>,
    /// External payment gateway base URL (payment::http protocol, http or https);
    /// default: the sandbox gateway.
    #[arg(long, env = "SMARTMART_PAYMENT_GATEWAY_URL")]
    pub payment_gateway_url: Option<String>,
    /// Each request to the external gateway, from connecting to its answer [default: 2000].
    #[arg(long, env = "SMARTMART_PAYMENT_GATEWAY_TIMEOUT_MS")]
    pub payment_gateway_timeout_ms: Option<u64>,
    /// PEM file of certificate authorities trusted for the external gateway besides the
    /// system's (certificates are always verified).
    #[arg(long, env = "SMARTMART_PAYMENT_GATEWAY_CA_FILE")]
    pub payment_gateway_ca_file: Option<PathBuf>,
    /// ISO 4217 currency of every amount [default: USD].
    #[arg(long, env = "SMARTMART_CURRENCY")]
    pub currency: Option<String>,
    /// Largest request body in bytes [default: 262144].
    #[arg(long, env = "SMARTMART_BODY_LIMIT_BYTES")]
    pub body_limit_bytes: Option<usize>,
    /// Longest a request may take before it is answered 504 [default: 10000].
    #[arg(long, env = "SMARTMART_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Longest one pipeline stage may take [default: 5000].
    #[arg(long, env = "SMARTMART_STAGE_TIMEOUT_MS")]
    pub stage_timeout_ms: Option<u64>,
    /// Hex ed25519 public keys, comma-separated: when set, every rule module
    /// needs a `<file>.sig` by one of them (see `smartmart rules sign`).
    #[arg(long, env = "SMARTMART_TRUSTED_KEYS")]
    pub trusted_keys: Option<String>,
    /// Watch the plug-in directory and hot-reload it on changes [default: true].
    #[arg(long, env = "SMARTMART_WATCH_PLUGINS")]
    pub watch_plugins: Option<bool>,
    /// Stored orders of its slot a new rule module or configuration is
    /// replayed on before a reload swaps it in (the replay gate; 0: the
    /// plug-in directory's examples only) [default: 200].
    #[arg(long, env = "SMARTMART_RELOAD_REPLAY_ORDERS")]
    pub reload_replay_orders: Option<usize>,
    /// How long an idempotency key is remembered once its order has its
    /// final answer: a retry within it gets that answer again, after it the
    /// key places a new order. A duration with a unit: `ms`, `s`, `m`, `h`,
    /// `d`, e.g. `24h` or `1h30m`; at least 1h [default: 24h].
    #[arg(long, env = "SMARTMART_RETENTION_IDEMPOTENCY")]
    pub retention_idempotency: Option<String>,
    /// How long delivered events stay in the outbox after their delivery
    /// (undelivered ones are always kept); a duration, at least 1m [default: 7d].
    #[arg(long, env = "SMARTMART_RETENTION_DELIVERED_EVENTS")]
    pub retention_delivered_events: Option<String>,
    /// How long shadow runs are kept (the shadow figures of
    /// /v1/admin/experiments sum the runs kept); a duration, at least 1m [default: 30d].
    #[arg(long, env = "SMARTMART_RETENTION_SHADOW_RUNS")]
    pub retention_shadow_runs: Option<String>,
    /// The most shadow runs kept, the newest (at least 1000) [default: 500000].
    #[arg(long, env = "SMARTMART_RETENTION_SHADOW_RUNS_MAX_ROWS")]
    pub retention_shadow_runs_max_rows: Option<u64>,
    /// How long rollout events (reloads, refusals, rollbacks, promotions)
    /// are kept; a duration, at least 1m [default: 90d].
    #[arg(long, env = "SMARTMART_RETENTION_ROLLOUT_EVENTS")]
    pub retention_rollout_events: Option<String>,
    /// The most rollout events kept, the newest (at least 100, the number
    /// /v1/admin/rollouts shows) [default: 10000].
    #[arg(long, env = "SMARTMART_RETENTION_ROLLOUT_EVENTS_MAX_ROWS")]
    pub retention_rollout_events_max_rows: Option<u64>,
    /// Longest in-flight requests get to finish on SIGTERM/SIGINT [default: 10000].
    #[arg(long, env = "SMARTMART_SHUTDOWN_GRACE_MS")]
    pub shutdown_grace_ms: Option<u64>,
    /// Longest a request's headers may take to arrive, from their first byte
    /// (or from the connection's accept); slower connections are closed [default: 10000].
    #[arg(long, env = "SMARTMART_HEADER_READ_TIMEOUT_MS")]
    pub header_read_timeout_ms: Option<u64>,
    /// Longest a keep-alive connection may wait for its next request before
    /// it is closed [default: 60000].
    #[arg(long, env = "SMARTMART_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Most HTTP connections open at once; past it the oldest connection
    /// that has not sent a whole request (else the longest-idle keep-alive
    /// one) is closed to make room [default: the soft descriptor limit
    /// (`ulimit -n`) less an eighth of it, at least 64, kept for the
    /// database, files and brokers].
    #[arg(long, env = "SMARTMART_HTTP_MAX_CONNECTIONS")]
    pub http_max_connections: Option<usize>,
    /// Most HTTP connections one client address (an IPv6 one by its /64)
    /// may hold at once; more are closed at once. Behind a load balancer or
    /// reverse proxy all connections come from its addresses: raise it, or set 0 (no cap) [default: half of SMARTMART_HTTP_MAX_CONNECTIONS].
    #[arg(long, env = "SMARTMART_HTTP_MAX_CONNECTIONS_PER_CLIENT")]
    pub http_max_connections_per_client: Option<usize>,
    /// Longest lifetime a customer token may have left when it is checked
    /// (`exp` minus now), in seconds; tokens valid for longer are refused [default: 86400].
    #[arg(long, env = "SMARTMART_MAX_TOKEN_LIFETIME_SECS")]
    pub max_token_lifetime_secs: Option<u64>,
    /// Where events go: `jsonl` (files in <data dir>/events/), `nats`
    /// (a NATS JetStream stream; the SMARTMART_NATS_* settings) or `kafka`
    /// (Kafka topics; the SMARTMART_KAFKA_* settings) [default: jsonl].
    #[arg(long, env = "SMARTMART_EVENT_SINK")]
    pub event_sink: Option<EventSinkKind>,
    /// NATS server URL, `nats://[user:password@]host:port` or `tls://…` (TLS
    /// required), `token@` for a token [default: nats://127.0.0.1:4222].
    /// Or `SMARTMART_NATS_URL_FILE`: a file holding it.
    #[arg(long, env = "SMARTMART_NATS_URL", hide_env_values = true)]
    pub nats_url: Option<String>,
    /// JetStream stream of the events, created at start when missing [default: SMARTMART_EVENTS].
    #[arg(long, env = "SMARTMART_NATS_STREAM")]
    pub nats_stream: Option<String>,
    /// Events are published to `<prefix>.audit`, `<prefix>.analytics` and
    /// `<prefix>.fraud`; the stream captures `<prefix>.>` [default: smartmart.events].
    #[arg(long, env = "SMARTMART_NATS_SUBJECT_PREFIX")]
    pub nats_subject_prefix: Option<String>,
    /// The stream's duplicate window, in seconds: an event delivered again
    /// within it (same `Nats-Msg-Id`) is dropped [default: 86400].
    #[arg(long, env = "SMARTMART_NATS_DUPLICATE_WINDOW_SECS")]
    pub nats_duplicate_window_secs: Option<u64>,
    /// Bounds connecting to NATS, each JetStream request and each publish
    /// acknowledgement; a delivery past it fails and is retried [default: 5000].
    #[arg(long, env = "SMARTMART_NATS_TIMEOUT_MS")]
    pub nats_timeout_ms: Option<u64>,
    /// TLS to NATS: `auto` (TLS when the server asks for it, or when a CA
    /// file, a client certificate or a `tls://` URL is set) or `required`
    /// (always, verified against the system's roots unless a CA file is set) [default: auto].
    #[arg(long, env = "SMARTMART_NATS_TLS")]
    pub nats_tls: Option<NatsTlsMode>,
    /// PEM file of the certificate authorities NATS's certificate must chain
    /// to, instead of the system's; TLS is then required.
    #[arg(long, env = "SMARTMART_NATS_CA_FILE")]
    pub nats_ca_file: Option<PathBuf>,
    /// Mutual TLS: PEM file of the client certificate presented to NATS
    /// (with SMARTMART_NATS_CLIENT_KEY_FILE).
    #[arg(long, env = "SMARTMART_NATS_CLIENT_CERT_FILE")]
    pub nats_client_cert_file: Option<PathBuf>,
    /// Mutual TLS: PEM file of the client certificate's private key.
    #[arg(long, env = "SMARTMART_NATS_CLIENT_KEY_FILE")]
    pub nats_client_key_file: Option<PathBuf>,
    /// NATS user (with SMARTMART_NATS_PASSWORD).
    #[arg(long, env = "SMARTMART_NATS_USER")]
    pub nats_user: Option<String>,
    /// NATS password of SMARTMART_NATS_USER.
    /// Or `SMARTMART_NATS_PASSWORD_FILE`: a file holding it.
    #[arg(long, env = "SMARTMART_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// NATS authentication token.
    /// Or `SMARTMART_NATS_TOKEN_FILE`: a file holding it.
    #[arg(long, env = "SMARTMART_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// Seed of the user NKey NATS knows the service by (`SU…`).
    /// Or `SMARTMART_NATS_NKEY_SEED_FILE`: a file holding it (a `.nk` file).
    #[arg(long, env = "SMARTMART_NATS_NKEY_SEED", hide_env_values = true)]
    pub nats_nkey_seed: Option<String>,
    /// A NATS `.creds` file (user JWT and NKey seed: decentralized
    /// authentication), read at each connection. One way to authenticate at
    /// most: user and password, token, NKey seed or creds file.
    #[arg(long, env = "SMARTMART_NATS_CREDS_FILE")]
    pub nats_creds_file: Option<PathBuf>,
    /// Kafka bootstrap brokers, `host:port[,host:port…]` [default: 127.0.0.1:9092].
    #[arg(long, env = "SMARTMART_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Events are produced to the topics `<prefix>.audit`, `<prefix>.analytics`
    /// and `<prefix>.fraud`, keyed by order id, with the headers `event-id` and
    /// `event-type`; at least once (consumers deduplicate by `event-id`)
    /// [default: smartmart.events].
    #[arg(long, env = "SMARTMART_KAFKA_TOPIC_PREFIX")]
    pub kafka_topic_prefix: Option<String>,
    /// Partitions of a topic created at start when missing (an existing
    /// topic keeps its own) [default: 3].
    #[arg(long, env = "SMARTMART_KAFKA_PARTITIONS")]
    pub kafka_partitions: Option<i32>,
    /// Replication factor of a topic created at start when missing [default: 1].
    #[arg(long, env = "SMARTMART_KAFKA_REPLICATION_FACTOR")]
    pub kafka_replication_factor: Option<i16>,
    /// Bounds connecting to Kafka, each topic check and each produce
    /// acknowledgement (acks = all); a delivery past it fails and is retried [default: 5000].
    #[arg(long, env = "SMARTMART_KAFKA_TIMEOUT_MS")]
    pub kafka_timeout_ms: Option<u64>,
    /// TLS to the Kafka brokers: `required` (their certificates verified
    /// against the system's roots, or SMARTMART_KAFKA_CA_FILE's) or
    /// `disabled` [default: required when a CA or client certificate file is
    /// set, else disabled].
    #[arg(long, env = "SMARTMART_KAFKA_TLS")]
    pub kafka_tls: Option<KafkaTlsMode>,
    /// PEM file of the CAs the Kafka brokers' certificates are checked
    /// against, instead of the system's roots; implies TLS.
    #[arg(long, env = "SMARTMART_KAFKA_CA_FILE")]
    pub kafka_ca_file: Option<PathBuf>,
    /// PEM client certificate (then any intermediates) for brokers that ask
    /// for one; with SMARTMART_KAFKA_CLIENT_KEY_FILE; implies TLS.
    #[arg(long, env = "SMARTMART_KAFKA_CLIENT_CERT_FILE")]
    pub kafka_client_cert_file: Option<PathBuf>,
    /// PEM private key of SMARTMART_KAFKA_CLIENT_CERT_FILE.
    #[arg(long, env = "SMARTMART_KAFKA_CLIENT_KEY_FILE")]
    pub kafka_client_key_file: Option<PathBuf>,
    /// SASL authentication to the Kafka brokers: `PLAIN`, `SCRAM-SHA-256` or
    /// `SCRAM-SHA-512`, with SMARTMART_KAFKA_SASL_USERNAME and _PASSWORD [default: none].
    #[arg(long, env = "SMARTMART_KAFKA_SASL_MECHANISM")]
    pub kafka_sasl_mechanism: Option<String>,
    /// The SASL user name.
    #[arg(long, env = "SMARTMART_KAFKA_SASL_USERNAME")]
    pub kafka_sasl_username: Option<String>,
    /// The SASL password. Or `SMARTMART_KAFKA_SASL_PASSWORD_FILE`: a file holding it.
    #[arg(long, env = "SMARTMART_KAFKA_SASL_PASSWORD", hide_env_values = true)]
    pub kafka_sasl_password: Option<String>,
    /// Log lines on standard error: `text` (one line per event, for people)
    /// or `json` (one JSON object per line: timestamp, level, target,
    /// message, the event's fields and its spans' fields); colours only
    /// when standard error is a terminal. Which lines: `RUST_LOG`
    /// [default: text].
    #[arg(long, env = "SMARTMART_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Export traces over OTLP/HTTP (protobuf) to this collector, e.g.
    /// `http://collector:4318` (traces go to `<endpoint>/v1/traces`): a span
    /// per request, per pipeline stage and per rule call. Unset: no traces
    /// are made. The standard `OTEL_SERVICE_NAME`, `OTEL_EXPORTER_OTLP_HEADERS`,
    /// `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_TRACES_SAMPLER` and `OTEL_BSP_*` apply.
    #[arg(long, env = "SMARTMART_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// Every setting, secrets redacted: a value whose name says it is a key, a
/// secret, a password, a token or a seed (paths to such files are shown),
/// and the password in any URL. Derived from the settings' names rather
/// than listed, so that a secret added later is redacted too.
impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let serde_json::Value::Object(fields) = serde_json::to_value(self).map_err(|_| std::fmt::Error)? else {
            return Err(std::fmt::Error);
        };
        let mut shown = f.debug_struct("ServeConfig");
        for (name, value) in &fields {
            match value {
                serde_json::Value::Null => shown.field(name, &None::<()>),
                _ if is_secret_setting(name) => shown.field(name, &REDACTED),
                serde_json::Value::String(text) if text.contains("://") => shown.field(name, &url_redacted(text)),
                other => shown.field(name, other),
            };
        }
        shown.finish()
    }
}

const REDACTED: &str = "<redacted>";

/// Whether a setting's value is a secret, by its name.
fn is_secret_setting(name: &str) -> bool {
    const SECRET_WORDS: [&str; 6] = ["key", "keys", "secret", "password", "token", "seed"];
    !name.ends_with("_file") && name.split('_').any(|word| SECRET_WORDS.contains(&word))
}

/// `scheme://user:password@host/…?password=…` with both passwords replaced.
fn url_redacted(url: &str) -> String {
    let mut shown = url.to_string();
    if let Some(scheme_end) = shown.find("://") {
        let authority_start = scheme_end + 3;
        let authority_end = shown[authority_start..].find(['/', '?', '#']).map_or(shown.len(), |i| authority_start + i);
        if let Some(at) = shown[authority_start..authority_end].rfind('@')
            && let Some(colon) = shown[authority_start..authority_start + at].find(':')
        {
            shown.replace_range(authority_start + colon + 1..authority_start + at, REDACTED);
        }
    }
    if let Some(query_start) = shown.find('?') {
        let (base, query) = shown.split_at(query_start + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if is_secret_setting(&name.to_ascii_lowercase()) => format!("{name}={REDACTED}"),
                _ => pair.to_string(),
            })
            .collect();
        shown = format!("{base}{}", query.join("&"));
    }
    shown
}

/// How log lines are written (`SMARTMART_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line per event, for people.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl LogFormat {
    /// `SMARTMART_LOG_FORMAT` as the commands other than `serve` read it
    /// (`serve` takes it from its configuration: flag, environment, file).
    /// Unset or empty: `text`.
    pub fn from_env() -> anyhow::Result<LogFormat> {
        match std::env::var("SMARTMART_LOG_FORMAT") {
            Ok(value) if !value.trim().is_empty() => LogFormat::parse(&value),
            Ok(_) | Err(std::env::VarError::NotPresent) => Ok(LogFormat::Text),
            Err(std::env::VarError::NotUnicode(_)) => bail!("SMARTMART_LOG_FORMAT must be `text` or `json`"),
        }
    }

    fn parse(value: &str) -> anyhow::Result<LogFormat> {
        match value.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => bail!("SMARTMART_LOG_FORMAT must be `text` or `json`, got `{other}`"),
        }
    }
}

/// Whether the NATS sink requires TLS (`SMARTMART_NATS_TLS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NatsTlsMode {
    /// TLS when the server asks for it, or when a CA file, a client
    /// certificate or a `tls://` URL is set.
    #[default]
    Auto,
    /// Always TLS: a server without it is refused.
    Required,
}

/// Whether the Kafka sink speaks TLS (`SMARTMART_KAFKA_TLS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KafkaTlsMode {
    /// Plaintext; refused together with a CA or client certificate file.
    Disabled,
    /// TLS, the brokers' certificates verified.
    Required,
}

/// Where events are delivered (`SMARTMART_EVENT_SINK`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventSinkKind {
    /// JSON Lines files in `<data dir>/events/`, each event exactly once.
    Jsonl,
    /// A NATS JetStream stream, duplicates dropped by `Nats-Msg-Id`.
    Nats,
    /// Kafka topics, keyed by order id, at least once (`event-id` header).
    Kafka,
}

impl ServeConfig {
    /// Reads a TOML file of the same keys (snake_case).
    pub fn from_file(path: &Path) -> anyhow::Result<ServeConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))
    }

    /// `self` where set, else `lower`.
    pub fn or(self, lower: ServeConfig) -> ServeConfig {
        ServeConfig {
            listen: self.listen.or(lower.listen),
            data_dir: self.data_dir.or(lower.data_dir),
            durability: self.durability.or(lower.durability),
            database_url: self.database_url.or(lower.database_url),
            database_pool_size: self.database_pool_size.or(lower.database_pool_size),
            recovery_after_ms: self.recovery_after_ms.or(lower.recovery_after_ms),
            plugins_dir: self.plugins_dir.or(lower.plugins_dir),
            channel_keys: self.channel_keys.or(lower.channel_keys),
            admin_key: self.admin_key.or(lower.admin_key),
            identity_secret: self.identity_secret.or(lower.identity_secret),
            pseudonym_key: self.pseudonym_key.or(lower.pseudonym_key),
            fraud_threshold_cents: self.fraud_threshold_cents.or(lower.fraud_threshold_cents),
            payment_max_attempts: self.payment_max_attempts.or(lower.payment_max_attempts),
            payment_retry_budget_ms: self.payment_retry_budget_ms.or(lower.payment_retry_budget_ms),
            payment_gateway_timeout_ms: self.payment_gateway_timeout_ms.or(lower.payment_gateway_timeout_ms),
            payment_gateway_ca_file: self.payment_gateway_ca_file.or(lower.payment_gateway_ca_file),
            payment_gateway_url: self.payment_gateway_url.or(lower.payment_gateway_url),
            currency: self.currency.or(lower.currency),
            body_limit_bytes: self.body_limit_bytes.or(lower.body_limit_bytes),
            request_timeout_ms: self.request_timeout_ms.or(lower.request_timeout_ms),
            stage_timeout_ms: self.stage_timeout_ms.or(lower.stage_timeout_ms),
            shutdown_grace_ms: self.shutdown_grace_ms.or(lower.shutdown_grace_ms),
            trusted_keys: self.trusted_keys.or(lower.trusted_keys),
            watch_plugins: self.watch_plugins.or(lower.watch_plugins),
            reload_replay_orders: self.reload_replay_orders.or(lower.reload_replay_orders),
            retention_idempotency: self.retention_idempotency.or(lower.retention_idempotency),
            retention_delivered_events: self.retention_delivered_events.or(lower.retention_delivered_events),
            retention_shadow_runs: self.retention_shadow_runs.or(lower.retention_shadow_runs),
            retention_shadow_runs_max_rows: self
                .retention_shadow_runs_max_rows
                .or(lower.retention_shadow_runs_max_rows),
            retention_rollout_events: self.retention_rollout_events.or(lower.retention_rollout_events),
            retention_rollout_events_max_rows: self
                .retention_rollout_events_max_rows
                .or(lower.retention_rollout_events_max_rows),
            header_read_timeout_ms: self.header_read_timeout_ms.or(lower.header_read_timeout_ms),
            idle_timeout_ms: self.idle_timeout_ms.or(lower.idle_timeout_ms),
            http_max_connections: self.http_max_connections.or(lower.http_max_connections),
            http_max_connections_per_client: self
                .http_max_connections_per_client
                .or(lower.http_max_connections_per_client),
            max_token_lifetime_secs: self.max_token_lifetime_secs.or(lower.max_token_lifetime_secs),
            event_sink: self.event_sink.or(lower.event_sink),
            nats_url: self.nats_url.or(lower.nats_url),
            nats_stream: self.nats_stream.or(lower.nats_stream),
            nats_subject_prefix: self.nats_subject_prefix.or(lower.nats_subject_prefix),
            nats_duplicate_window_secs: self.nats_duplicate_window_secs.or(lower.nats_duplicate_window_secs),
            nats_timeout_ms: self.nats_timeout_ms.or(lower.nats_timeout_ms),
            nats_tls: self.nats_tls.or(lower.nats_tls),
            nats_ca_file: self.nats_ca_file.or(lower.nats_ca_file),
            nats_client_cert_file: self.nats_client_cert_file.or(lower.nats_client_cert_file),
            nats_client_key_file: self.nats_client_key_file.or(lower.nats_client_key_file),
            nats_user: self.nats_user.or(lower.nats_user),
            nats_password: self.nats_password.or(lower.nats_password),
            nats_token: self.nats_token.or(lower.nats_token),
            nats_nkey_seed: self.nats_nkey_seed.or(lower.nats_nkey_seed),
            nats_creds_file: self.nats_creds_file.or(lower.nats_creds_file),
            kafka_brokers: self.kafka_brokers.or(lower.kafka_brokers),
            kafka_topic_prefix: self.kafka_topic_prefix.or(lower.kafka_topic_prefix),
            kafka_partitions: self.kafka_partitions.or(lower.kafka_partitions),
            kafka_replication_factor: self.kafka_replication_factor.or(lower.kafka_replication_factor),
            kafka_timeout_ms: self.kafka_timeout_ms.or(lower.kafka_timeout_ms),
            kafka_tls: self.kafka_tls.or(lower.kafka_tls),
            kafka_ca_file: self.kafka_ca_file.or(lower.kafka_ca_file),
            kafka_client_cert_file: self.kafka_client_cert_file.or(lower.kafka_client_cert_file),
            kafka_client_key_file: self.kafka_client_key_file.or(lower.kafka_client_key_file),
            kafka_sasl_mechanism: self.kafka_sasl_mechanism.or(lower.kafka_sasl_mechanism),
            kafka_sasl_username: self.kafka_sasl_username.or(lower.kafka_sasl_username),
            kafka_sasl_password: self.kafka_sasl_password.or(lower.kafka_sasl_password),
            log_format: self.log_format.or(lower.log_format),
            otlp_endpoint: self.otlp_endpoint.or(lower.otlp_endpoint),
        }
    }

    /// Where traces are exported (`SMARTMART_OTLP_ENDPOINT` + `/v1/traces`),
    /// or `None` when unset or empty: no exporter. Refused: anything but an
    /// `http` or `https` URL with a host; a query or fragment (the signal's
    /// path is appended); credentials in it (they belong in
    /// `OTEL_EXPORTER_OTLP_HEADERS`, and the endpoint is logged at start).
    pub fn otlp_traces_endpoint(&self) -> anyhow::Result<Option<String>> {
        let Some(endpoint) = self.otlp_endpoint.as_deref().map(str::trim).filter(|e| !e.is_empty()) else {
            return Ok(None);
        };
        let url =
            reqwest::Url::parse(endpoint).map_err(|e| anyhow::anyhow!("SMARTMART_OTLP_ENDPOINT is not a URL ({e})"))?;
        if !url.username().is_empty() || url.password().is_some() {
            bail!("SMARTMART_OTLP_ENDPOINT must not carry credentials: send them with OTEL_EXPORTER_OTLP_HEADERS");
        }
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            bail!("SMARTMART_OTLP_ENDPOINT must be an http:// or https:// URL with a host, got `{endpoint}`");
        }
        if url.query().is_some() || url.fragment().is_some() {
            bail!(
                "SMARTMART_OTLP_ENDPOINT must have no query or fragment (`/v1/traces` is appended), got `{endpoint}`"
            );
        }
        Ok(Some(format!("{}/v1/traces", url.as_str().trim_end_matches('/'))))
    }
}

/// The settings that carry a secret, each also accepted as `<NAME>_FILE`:
/// the path of a file holding the value (a Docker or Kubernetes secret),
/// so that it stays out of the environment and `ps`.
pub const SECRET_SETTINGS: [&str; 10] = [
    "SMARTMART_DATABASE_URL",
    "SMARTMART_CHANNEL_KEYS",
    "SMARTMART_ADMIN_KEY",
    "SMARTMART_IDENTITY_SECRET",
    "SMARTMART_PSEUDONYM_KEY",
    "SMARTMART_NATS_URL",
    "SMARTMART_NATS_PASSWORD",
    "SMARTMART_NATS_TOKEN",
    "SMARTMART_NATS_NKEY_SEED",
    "SMARTMART_KAFKA_SASL_PASSWORD",
];

/// Looks an environment variable up: the process's (`std::env::var_os`), or a
/// map in tests.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<OsString>;

/// The process environment, as an [`EnvLookup`].
pub fn process_env(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}

/// The value of the secret setting `name` read from the file `<name>_FILE`
/// names, or `None` when `<name>_FILE` is unset (or empty). The content is
/// the value with one trailing newline (`\n` or `\r\n`) removed, nothing
/// else trimmed. Refused: `<name>` and `<name>_FILE` both set, and a file that
/// cannot be read, is not UTF-8 or holds nothing. Errors name the variable
/// and the path, never the content.
pub fn secret_from_file(name: &str, env: EnvLookup<'_>) -> anyhow::Result<Option<String>> {
    let file_var = format!("{name}_FILE");
    let Some(path) = env(&file_var).filter(|p| !p.is_empty()).map(PathBuf::from) else {
        return Ok(None);
    };
    if env(name).is_some_and(|v| !v.is_empty()) {
        bail!("both {name} and {file_var} are set: set only one of them");
    }
    let bytes = std::fs::read(&path).map_err(|e| anyhow::anyhow!("{file_var}: cannot read {}: {e}", path.display()))?;
    let Ok(mut value) = String::from_utf8(bytes) else {
        bail!("{file_var}: {} is not UTF-8 text", path.display());
    };
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    if value.is_empty() {
        bail!("{file_var}: {} is empty", path.display());
    }
    Ok(Some(value))
}

impl ServeConfig {
    /// Fills every secret setting (see [`SECRET_SETTINGS`]) from its
    /// `<NAME>_FILE`, for the configuration the command line and the
    /// environment gave (before the `--config` file is merged in). Precedence:
    /// the command-line flag, then `<NAME>` or `<NAME>_FILE` (never both),
    /// then the `--config` file.
    pub fn with_secret_files(mut self, env: EnvLookup<'_>) -> anyhow::Result<ServeConfig> {
        let fields: [(&str, &mut Option<String>); SECRET_SETTINGS.len()] = [
            (SECRET_SETTINGS[0], &mut self.database_url),
            (SECRET_SETTINGS[1], &mut self.channel_keys),
            (SECRET_SETTINGS[2], &mut self.admin_key),
            (SECRET_SETTINGS[3], &mut self.identity_secret),
            (SECRET_SETTINGS[4], &mut self.pseudonym_key),
            (SECRET_SETTINGS[5], &mut self.nats_url),
            (SECRET_SETTINGS[6], &mut self.nats_password),
            (SECRET_SETTINGS[7], &mut self.nats_token),
            (SECRET_SETTINGS[8], &mut self.nats_nkey_seed),
            (SECRET_SETTINGS[9], &mut self.kafka_sasl_password),
        ];
        for (name, field) in fields {
            if let Some(value) = secret_from_file(name, env)?
                && field.as_deref().is_none_or(str::is_empty)
            {
                // A value already here came from the flag (`<NAME>` with `<NAME>_FILE` is refused).
                *field = Some(value);
            }
        }
        Ok(self)
    }
}

const MIN_SECRET_LEN: usize = 16;

/// Parsing of `SMARTMART_CHANNEL_KEYS`.
struct ChannelKeys;

impl ChannelKeys {
    fn parse(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
        let mut keys = BTreeMap::new();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((channel, key)) = pair.split_once(':') else {
                bail!("SMARTMART_CHANNEL_KEYS: expected CHANNEL:KEY pairs separated by commas");
            };
            let (channel, key) = (channel.trim(), key.trim());
            if channel.parse::<Channel>().is_err() {
                bail!("SMARTMART_CHANNEL_KEYS: unknown channel `{channel}` ({})", Channel::names());
            }
            if key.len() < MIN_SECRET_LEN {
                bail!("SMARTMART_CHANNEL_KEYS: the key of `{channel}` is shorter than {MIN_SECRET_LEN} characters");
            }
            keys.insert(channel.to_string(), key.to_string());
        }
        if keys.is_empty() {
            bail!("SMARTMART_CHANNEL_KEYS: no channel key configured");
        }
        let mut seen: Vec<&String> = keys.values().collect();
        seen.sort();
        seen.dedup();
        if seen.len() != keys.len() {
            bail!("SMARTMART_CHANNEL_KEYS: two channels share a key");
        }
        Ok(keys)
    }
}

/// Everything `serve` runs with, defaults applied and validated.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub listen: SocketAddr,
    pub credentials: Credentials,
    pub body_limit_bytes: usize,
    pub request_timeout: Duration,
    pub shutdown_grace: Duration,
    pub connection_limits: ConnectionLimits,
    pub engine: EngineSettingsView,
    /// Whether `pseudonym_key` was configured (else it is derived from the identity secret).
    pub pseudonym_key_configured: bool,
}

/// The engine's settings (secrets redacted from `Debug`).
#[derive(Clone)]
pub struct EngineSettingsView(pub EngineSettings);

impl std::fmt::Debug for EngineSettingsView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineSettings")
            .field("data_dir", &self.0.data_dir)
            .field("plugins_dir", &self.0.plugins_dir)
            .field("currency", &self.0.currency)
            .field("event_sink", &self.0.event_sink)
            .finish_non_exhaustive()
    }
}

impl ServeSettings {
    /// Applies defaults and checks every value. Without credentials,
    /// `dev` generates random ones; otherwise starting is refused, so the
    /// service never runs with guessable keys.
    pub fn resolve(config: ServeConfig, dev: bool) -> anyhow::Result<(ServeSettings, bool)> {
        let configured = [&config.channel_keys, &config.admin_key, &config.identity_secret];
        let generated = configured.iter().all(|c| c.is_none());
        let credentials = if generated {
            if !dev {
                bail!(
                    "no credentials configured: set SMARTMART_CHANNEL_KEYS, SMARTMART_ADMIN_KEY and \
                     SMARTMART_IDENTITY_SECRET (or the same keys in --config), or pass --dev to generate random ones"
                );
            }
            Credentials::generate()
        } else {
            let channel_keys =
                ChannelKeys::parse(config.channel_keys.as_deref().context("SMARTMART_CHANNEL_KEYS is not set")?)?;
            let admin_key = config.admin_key.clone().context("SMARTMART_ADMIN_KEY is not set")?;
            let identity_secret = config.identity_secret.clone().context("SMARTMART_IDENTITY_SECRET is not set")?;
            for (name, value) in [("SMARTMART_ADMIN_KEY", &admin_key), ("SMARTMART_IDENTITY_SECRET", &identity_secret)]
            {
                if value.len() < MIN_SECRET_LEN {
                    bail!("{name} is shorter than {MIN_SECRET_LEN} characters");
                }
            }
            if channel_keys.values().any(|k| *k == admin_key) {
                bail!("SMARTMART_ADMIN_KEY must differ from every channel key");
            }
            Credentials { channel_keys, admin_key, identity_secret }
        };
        let event_sink = event_sink(&config)?;
        let retention = retention(&config)?;
        let data_dir = config.data_dir.unwrap_or_else(|| PathBuf::from("smartmart-data"));
        let plugins_dir = config.plugins_dir.unwrap_or_else(|| PathBuf::from("plugins/bundled"));
        let mut engine = EngineSettings::new(&data_dir, &plugins_dir, credentials.identity_secret.as_bytes());
        engine.event_sink = event_sink;
        engine.retention = retention;
        if let Some(key) = &config.pseudonym_key {
            engine.pseudonym_key = key.as_bytes().to_vec();
        }
        engine.store.durability = config.durability.unwrap_or(crate::store::Durability::Full);
        if let Some(url) = config.database_url.filter(|u| !u.is_empty()) {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                bail!("SMARTMART_DATABASE_URL must be a postgres:// URL");
            }
            engine.database = crate::store::Database::Postgres(url);
        }
        let pool_size = config.database_pool_size.unwrap_or(16);
        if !(1..=1000).contains(&pool_size) {
            bail!("SMARTMART_DATABASE_POOL_SIZE must be 1..=1000, got {pool_size}");
        }
        engine.postgres.pool_size = pool_size;
        let recovery_after_ms = config.recovery_after_ms.unwrap_or(60_000);
        if recovery_after_ms < 100 {
            bail!("SMARTMART_RECOVERY_AFTER_MS must be at least 100, got {recovery_after_ms}");
        }
        engine.janitor_min_age = Duration::from_millis(recovery_after_ms);
        // A pass every quarter of the age, and at least every second: an
        // interrupted order waits at most 1.25 times the age, and a payment
        // answered PAYMENT_PENDING is asked about again within a second of
        // being due.
        engine.janitor_every = (engine.janitor_min_age / 4).min(Duration::from_secs(1));
        engine.currency = config.currency.unwrap_or_else(|| "USD".into());
        if engine.currency.len() != 3 || !engine.currency.chars().all(|c| c.is_ascii_uppercase()) {
            bail!("SMARTMART_CURRENCY must be an ISO 4217 code such as USD, got `{}`", engine.currency);
        }
        engine.fraud_threshold_cents = config.fraud_threshold_cents.unwrap_or(500_000);
        if let Some(attempts) = config.payment_max_attempts
            && !(1..=100).contains(&attempts)
        {
            bail!("SMARTMART_PAYMENT_MAX_ATTEMPTS must be 1..=100, got {attempts}");
        }
        let budget_ms = config.payment_retry_budget_ms.unwrap_or(2_500);
        let gateway_timeout_ms = config.payment_gateway_timeout_ms.unwrap_or(2_000);
        if !(1..=600_000).contains(&gateway_timeout_ms) {
            bail!("SMARTMART_PAYMENT_GATEWAY_TIMEOUT_MS must be 1..=600000, got {gateway_timeout_ms}");
        }
        engine.retry = RetryPolicy {
            budget: Duration::from_millis(budget_ms),
            max_attempts: config.payment_max_attempts,
            ..RetryPolicy::default()
        };
        let ca_file = config.payment_gateway_ca_file.clone();
        match config.payment_gateway_url {
            Some(url) => {
                engine.gateway = GatewayChoice::Http {
                    url,
                    options: HttpGatewayOptions { timeout: Duration::from_millis(gateway_timeout_ms), ca_file },
                };
            }
            None if ca_file.is_some() => {
                bail!("SMARTMART_PAYMENT_GATEWAY_CA_FILE is set but SMARTMART_PAYMENT_GATEWAY_URL is not")
            }
            None => {}
        }
        if let Some(keys) = &config.trusted_keys {
            engine.trusted_keys = parse_trusted_keys(keys)?;
        }
        engine.watch_plugins = config.watch_plugins.unwrap_or(true);
        engine.reload_replay_orders = config.reload_replay_orders.unwrap_or(200);
        if engine.reload_replay_orders > 100_000 {
            bail!("SMARTMART_RELOAD_REPLAY_ORDERS must be 0..=100000, got {}", engine.reload_replay_orders);
        }
        let stage_timeout_ms = config.stage_timeout_ms.unwrap_or(5_000);
        let request_timeout_ms = config.request_timeout_ms.unwrap_or(10_000);
        if stage_timeout_ms == 0 || request_timeout_ms == 0 {
            bail!("timeouts must be positive");
        }
        engine.stage_timeout = Duration::from_millis(stage_timeout_ms);
        // The retries must leave room, before the answer is due, to resolve
        // an outcome they left unknown.
        if budget_ms >= stage_timeout_ms {
            bail!(
                "SMARTMART_PAYMENT_RETRY_BUDGET_MS ({budget_ms}) must be below the stage timeout \
                 SMARTMART_STAGE_TIMEOUT_MS ({stage_timeout_ms})"
            );
        }
        let header_read_timeout_ms = config.header_read_timeout_ms.unwrap_or(10_000);
        let idle_timeout_ms = config.idle_timeout_ms.unwrap_or(60_000);
        if header_read_timeout_ms == 0 || idle_timeout_ms == 0 {
            bail!("SMARTMART_HEADER_READ_TIMEOUT_MS and SMARTMART_IDLE_TIMEOUT_MS must be positive");
        }
        if config.http_max_connections == Some(0) {
            bail!("SMARTMART_HTTP_MAX_CONNECTIONS must be at least 1 (unset: derived from the descriptor limit)");
        }
        let max_token_lifetime_secs = config.max_token_lifetime_secs.unwrap_or(24 * 3600);
        if max_token_lifetime_secs == 0 {
            bail!("SMARTMART_MAX_TOKEN_LIFETIME_SECS must be positive");
        }
        engine.max_token_lifetime = Duration::from_secs(max_token_lifetime_secs);
        let body_limit_bytes = config.body_limit_bytes.unwrap_or(256 * 1024);
        if body_limit_bytes < 1024 {
            bail!("SMARTMART_BODY_LIMIT_BYTES must be at least 1024");
        }
        Ok((
            ServeSettings {
                listen: config.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
                credentials,
                body_limit_bytes,
                request_timeout: Duration::from_millis(request_timeout_ms),
                shutdown_grace: Duration::from_millis(config.shutdown_grace_ms.unwrap_or(10_000)),
                connection_limits: ConnectionLimits {
                    header_read_timeout: Duration::from_millis(header_read_timeout_ms),
                    idle_timeout: Duration::from_millis(idle_timeout_ms),
                    max_connections: config.http_max_connections,
                    max_connections_per_client: config.http_max_connections_per_client,
                },
                engine: EngineSettingsView(engine),
                pseudonym_key_configured: config.pseudonym_key.is_some(),
            },
            generated,
        ))
    }
}

impl ServeSettings {
    /// Replaces the credentials (`--dev`: the ones kept in the data dir) and
    /// every key derived from the identity secret: the experiment-assignment
    /// key always, the analytics pseudonym key unless it was configured. So a
    /// restart on the same data dir keeps both, and sticky A/B assignment sticks.
    pub fn use_credentials(&mut self, credentials: Credentials) {
        let engine = &mut self.engine.0;
        let derived =
            EngineSettings::new(&engine.data_dir, &engine.plugins_dir, credentials.identity_secret.as_bytes());
        engine.identity_secret = derived.identity_secret;
        engine.experiment_key = derived.experiment_key;
        if !self.pseudonym_key_configured {
            engine.pseudonym_key = derived.pseudonym_key;
        }
        self.credentials = credentials;
    }
}

/// The event sink the configuration chooses, its settings checked.
fn event_sink(config: &ServeConfig) -> anyhow::Result<SinkChoice> {
    match config.event_sink.unwrap_or(EventSinkKind::Jsonl) {
        EventSinkKind::Jsonl => Ok(SinkChoice::Jsonl),
        EventSinkKind::Nats => {
            let defaults = NatsSettings::default();
            let settings = NatsSettings {
                url: config.nats_url.clone().unwrap_or(defaults.url),
                stream: config.nats_stream.clone().unwrap_or(defaults.stream),
                subject_prefix: config.nats_subject_prefix.clone().unwrap_or(defaults.subject_prefix),
                duplicate_window: config
                    .nats_duplicate_window_secs
                    .map(Duration::from_secs)
                    .unwrap_or(defaults.duplicate_window),
                timeout: config.nats_timeout_ms.map(Duration::from_millis).unwrap_or(defaults.timeout),
                tls: NatsTls {
                    required: config.nats_tls == Some(NatsTlsMode::Required),
                    ca_file: config.nats_ca_file.clone(),
                    client_cert: ClientCertificate::from_files(
                        config.nats_client_cert_file.clone(),
                        config.nats_client_key_file.clone(),
                    )?,
                },
                auth: NatsAuth::from_settings(
                    config.nats_user.clone(),
                    config.nats_password.clone(),
                    config.nats_token.clone(),
                    config.nats_nkey_seed.clone(),
                    config.nats_creds_file.clone(),
                )?,
            };
            settings.validate()?;
            Ok(SinkChoice::Nats(settings))
        }
        EventSinkKind::Kafka => {
            let defaults = KafkaSettings::default();
            let settings = KafkaSettings {
                brokers: config.kafka_brokers.as_deref().map(KafkaSettings::parse_brokers).unwrap_or(defaults.brokers),
                topic_prefix: config.kafka_topic_prefix.clone().unwrap_or(defaults.topic_prefix),
                partitions: config.kafka_partitions.unwrap_or(defaults.partitions),
                replication_factor: config.kafka_replication_factor.unwrap_or(defaults.replication_factor),
                timeout: config.kafka_timeout_ms.map(Duration::from_millis).unwrap_or(defaults.timeout),
                tls: kafka_tls(config)?,
                sasl: kafka_sasl(config)?,
            };
            settings.validate()?;
            Ok(SinkChoice::Kafka(settings))
        }
    }
}

/// TLS to Kafka as the settings ask for it: `SMARTMART_KAFKA_TLS`, or implied
/// by a CA or client certificate file.
fn kafka_tls(config: &ServeConfig) -> anyhow::Result<Option<KafkaTls>> {
    let client_certificate = match (&config.kafka_client_cert_file, &config.kafka_client_key_file) {
        (Some(cert_file), Some(key_file)) => {
            Some(kafka::ClientCertificate { cert_file: cert_file.clone(), key_file: key_file.clone() })
        }
        (None, None) => None,
        (Some(_), None) => bail!("SMARTMART_KAFKA_CLIENT_CERT_FILE is set but SMARTMART_KAFKA_CLIENT_KEY_FILE is not"),
        (None, Some(_)) => bail!("SMARTMART_KAFKA_CLIENT_KEY_FILE is set but SMARTMART_KAFKA_CLIENT_CERT_FILE is not"),
    };
    let files = config.kafka_ca_file.is_some() || client_certificate.is_some();
    let tls = KafkaTls { ca_file: config.kafka_ca_file.clone(), client_certificate };
    match config.kafka_tls {
        Some(KafkaTlsMode::Disabled) if files => bail!(
            "SMARTMART_KAFKA_TLS is `disabled` but SMARTMART_KAFKA_CA_FILE or SMARTMART_KAFKA_CLIENT_CERT_FILE is \
             set: they need TLS"
        ),
        Some(KafkaTlsMode::Disabled) => Ok(None),
        Some(KafkaTlsMode::Required) => Ok(Some(tls)),
        None => Ok(files.then_some(tls)),
    }
}

/// SASL to Kafka: a mechanism with both credentials, or none of the three.
fn kafka_sasl(config: &ServeConfig) -> anyhow::Result<Option<KafkaSasl>> {
    let set = |value: &Option<String>| value.clone().filter(|v| !v.is_empty());
    let mechanism = set(&config.kafka_sasl_mechanism).map(|m| SaslMechanism::parse(&m)).transpose()?;
    match (mechanism, set(&config.kafka_sasl_username), set(&config.kafka_sasl_password)) {
        (None, None, None) => Ok(None),
        (Some(mechanism), Some(username), Some(password)) => Ok(Some(KafkaSasl { mechanism, username, password })),
        (Some(mechanism), username, _) => bail!(
            "SMARTMART_KAFKA_SASL_MECHANISM is {mechanism} but SMARTMART_KAFKA_SASL_{} is not set{}",
            if username.is_none() { "USERNAME" } else { "PASSWORD" },
            if username.is_none() { "" } else { " (nor SMARTMART_KAFKA_SASL_PASSWORD_FILE)" }
        ),
        (None, _, _) => bail!(
            "SMARTMART_KAFKA_SASL_USERNAME or SMARTMART_KAFKA_SASL_PASSWORD is set but SMARTMART_KAFKA_SASL_MECHANISM \
             is not: set it to PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
        ),
    }
}

/// The retention windows and row caps the configuration sets, checked.
fn retention(config: &ServeConfig) -> anyhow::Result<RetentionSettings> {
    const MINUTE: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);
    let defaults = RetentionSettings::default();
    // A key forgotten too soon makes a client's retry a second order: the
    // API promises 24 h, and less than an hour is refused outright.
    let idempotency =
        window("SMARTMART_RETENTION_IDEMPOTENCY", config.retention_idempotency.as_deref(), defaults.idempotency, HOUR)?;
    let delivered_events = window(
        "SMARTMART_RETENTION_DELIVERED_EVENTS",
        config.retention_delivered_events.as_deref(),
        defaults.delivered_events,
        MINUTE,
    )?;
    let shadow_runs = window(
        "SMARTMART_RETENTION_SHADOW_RUNS",
        config.retention_shadow_runs.as_deref(),
        defaults.shadow_runs,
        MINUTE,
    )?;
    let rollout_events = window(
        "SMARTMART_RETENTION_ROLLOUT_EVENTS",
        config.retention_rollout_events.as_deref(),
        defaults.rollout_events,
        MINUTE,
    )?;
    let shadow_runs_max_rows = config.retention_shadow_runs_max_rows.unwrap_or(defaults.shadow_runs_max_rows);
    if !(1_000..=MAX_ROWS).contains(&shadow_runs_max_rows) {
        bail!("SMARTMART_RETENTION_SHADOW_RUNS_MAX_ROWS must be 1000..={MAX_ROWS}, got {shadow_runs_max_rows}");
    }
    // The admin API shows the 100 most recent rollout events.
    let rollout_events_max_rows = config.retention_rollout_events_max_rows.unwrap_or(defaults.rollout_events_max_rows);
    if !(100..=MAX_ROWS).contains(&rollout_events_max_rows) {
        bail!("SMARTMART_RETENTION_ROLLOUT_EVENTS_MAX_ROWS must be 100..={MAX_ROWS}, got {rollout_events_max_rows}");
    }
    Ok(RetentionSettings {
        idempotency,
        delivered_events,
        shadow_runs,
        shadow_runs_max_rows,
        rollout_events,
        rollout_events_max_rows,
        ..defaults
    })
}

/// The largest row cap a retention setting takes.
const MAX_ROWS: u64 = 1_000_000_000;

/// The longest retention window (ten years: any longer is "keep").
const MAX_WINDOW: Duration = Duration::from_secs(3650 * 24 * 3600);

/// The retention window `name` sets (`text`, or `default` when unset),
/// checked against `min` and [`MAX_WINDOW`].
fn window(name: &str, text: Option<&str>, default: Duration, min: Duration) -> anyhow::Result<Duration> {
    let Some(text) = text else {
        return Ok(default);
    };
    let window = parse_duration(text).map_err(|e| anyhow::anyhow!("{name}: `{text}` is not a duration: {e}"))?;
    if window < min || window > MAX_WINDOW {
        bail!("{name} must be between {} and 3650d, got `{text}`", show_duration(min));
    }
    Ok(window)
}

/// `1h` for an hour, `1m` for a minute: the bounds as a setting writes them.
fn show_duration(d: Duration) -> String {
    match d.as_secs() {
        s if s % 86_400 == 0 && s > 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 && s > 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// A duration as people write it: one or more groups of a whole number and
/// a unit — `ms`, `s`, `m`, `h` or `d` — such as `24h`, `7d`, `1h30m` or
/// `500ms` (spaces allowed between them). A bare number is refused: it
/// would be ambiguous beside the `_MS` and `_SECS` settings.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    const HINT: &str = "a duration is a whole number with a unit (ms, s, m, h, d), e.g. 24h, 7d or 1h30m";
    let mut rest = text.trim();
    if rest.is_empty() {
        bail!("empty: {HINT}");
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            bail!("expected a number at `{rest}`: {HINT}");
        }
        let number: u64 = rest[..digits].parse().with_context(|| format!("`{}` is too large", &rest[..digits]))?;
        rest = rest[digits..].trim_start();
        let unit = rest.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(rest.len());
        let millis_per_unit: u64 = match &rest[..unit] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => bail!("`{number}` has no unit: {HINT}"),
            other => bail!("unknown unit `{other}`: {HINT}"),
        };
        let millis = number.checked_mul(millis_per_unit).context("too large")?;
        total = total.checked_add(Duration::from_millis(millis)).context("too large")?;
        rest = rest[unit..].trim_start();
    }
    Ok(total)
}

/// Parses `SMARTMART_TRUSTED_KEYS`: hex ed25519 public keys, comma-separated.
pub fn parse_trusted_keys(text: &str) -> anyhow::Result<Vec<ed25519_dalek::VerifyingKey>> {
    text.split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(|k| {
            let bytes: [u8; 32] = hex::decode(k)
                .ok()
                .and_then(|b| b.try_into().ok())
                .with_context(|| format!("SMARTMART_TRUSTED_KEYS: `{k}` is not 64 hex digits"))?;
            ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                .with_context(|| format!("SMARTMART_TRUSTED_KEYS: `{k}` is not an ed25519 public key"))
        })
        .collect()
}

#[cfg(test)]
mod tests {

    use super::*;

    fn keyed() -> ServeConfig {
        ServeConfig {
            channel_keys: Some("web:web-key-0123456789,mobile:mobile-key-0123456789".into()),
            admin_key: Some("admin-key-0123456789".into()),
            identity_secret: Some("identity-secret-0123456789".into()),
            ..ServeConfig::default()
        }
    }

    #[test]
    fn refuses_to_start_without_credentials_unless_dev() {
        assert!(ServeSettings::resolve(ServeConfig::default(), false).is_err());
        let (settings, generated) = ServeSettings::resolve(ServeConfig::default(), true).unwrap();
        assert!(generated);
        assert_eq!(settings.credentials.channel_keys.len(), 3);
        assert!(settings.credentials.admin_key.len() >= 32);
    }

    #[test]
    fn validates_keys_and_numbers() {
        let (settings, generated) = ServeSettings::resolve(keyed(), false).unwrap();
        assert!(!generated);
        assert_eq!(settings.credentials.channel_keys["web"], "web-key-0123456789");
        let short = ServeConfig { admin_key: Some("short".into()), ..keyed() };
        assert!(ServeSettings::resolve(short, false).unwrap_err().to_string().contains("SMARTMART_ADMIN_KEY"));
        let bad_channel = ServeConfig { channel_keys: Some("shop:0123456789abcdef".into()), ..keyed() };
        assert!(ServeSettings::resolve(bad_channel, false).is_err());
        let attempts = ServeConfig { payment_max_attempts: Some(0), ..keyed() };
        assert!(ServeSettings::resolve(attempts, false).is_err());
    }

    #[test]
    fn payment_settings_default_and_are_checked() {
        let (settings, _) = ServeSettings::resolve(keyed(), false).unwrap();
        let retry = &settings.engine.0.retry;
        assert_eq!((retry.budget, retry.max_attempts), (Duration::from_millis(2_500), None));
        assert!(matches!(settings.engine.0.gateway, GatewayChoice::Sandbox));

        let https = ServeConfig {
            payment_gateway_url: Some("https://pay.example".into()),
            payment_gateway_timeout_ms: Some(750),
            payment_gateway_ca_file: Some("ca.pem".into()),
            payment_retry_budget_ms: Some(1_000),
            payment_max_attempts: Some(7),
            ..keyed()
        };
        let (settings, _) = ServeSettings::resolve(https, false).unwrap();
        let GatewayChoice::Http { url, options } = &settings.engine.0.gateway else { panic!("an HTTP gateway") };
        assert_eq!(url, "https://pay.example");
        assert_eq!(options.timeout, Duration::from_millis(750));
        assert_eq!(options.ca_file.as_deref(), Some(Path::new("ca.pem")));
        assert_eq!(settings.engine.0.retry.budget, Duration::from_millis(1_000));
        assert_eq!(settings.engine.0.retry.max_attempts, Some(7));

        for (bad, names) in [
            (ServeConfig { payment_retry_budget_ms: Some(5_000), ..keyed() }, "SMARTMART_PAYMENT_RETRY_BUDGET_MS"),
            (ServeConfig { payment_gateway_timeout_ms: Some(0), ..keyed() }, "SMARTMART_PAYMENT_GATEWAY_TIMEOUT_MS"),
            (
                ServeConfig { payment_gateway_ca_file: Some("ca.pem".into()), ..keyed() },
                "SMARTMART_PAYMENT_GATEWAY_URL",
            ),
            (ServeConfig { payment_max_attempts: Some(101), ..keyed() }, "SMARTMART_PAYMENT_MAX_ATTEMPTS"),
        ] {
            let error = ServeSettings::resolve(bad, false).unwrap_err().to_string();
            assert!(error.contains(names), "{error}");
        }
    }

    #[test]
    fn connection_limits_and_token_lifetime_default_and_are_checked() {
        let (settings, _) = ServeSettings::resolve(keyed(), false).unwrap();
        assert_eq!(settings.connection_limits.header_read_timeout, Duration::from_secs(10));
        assert_eq!(settings.connection_limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(settings.connection_limits.max_connections, None, "derived from the descriptor limit");
        assert_eq!(settings.connection_limits.max_connections_per_client, None, "half the budget");
        assert_eq!(settings.engine.0.max_token_lifetime, Duration::from_secs(24 * 3600));
        let file: ServeConfig = toml::from_str(
            "header_read_timeout_ms = 1500\nidle_timeout_ms = 2500\nmax_token_lifetime_secs = 31536000\n\
             http_max_connections = 5000\nhttp_max_connections_per_client = 0",
        )
        .unwrap();
        let (settings, _) = ServeSettings::resolve(file.or(keyed()), false).unwrap();
        assert_eq!(settings.connection_limits.header_read_timeout, Duration::from_millis(1500));
        assert_eq!(settings.connection_limits.idle_timeout, Duration::from_millis(2500));
        assert_eq!(settings.connection_limits.max_connections, Some(5000));
        assert_eq!(settings.connection_limits.max_connections_per_client, Some(0), "0: no cap");
        assert_eq!(settings.engine.0.max_token_lifetime, Duration::from_secs(31_536_000));
        for zero in [
            ServeConfig { header_read_timeout_ms: Some(0), ..keyed() },
            ServeConfig { idle_timeout_ms: Some(0), ..keyed() },
            ServeConfig { max_token_lifetime_secs: Some(0), ..keyed() },
        ] {
            assert!(ServeSettings::resolve(zero, false).is_err());
        }
        let no_connections = ServeConfig { http_max_connections: Some(0), ..keyed() };
        let error = ServeSettings::resolve(no_connections, false).unwrap_err().to_string();
        assert!(error.contains("SMARTMART_HTTP_MAX_CONNECTIONS"), "{error}");
    }

    #[test]
    fn the_event_sink_defaults_to_jsonl_and_nats_takes_its_settings() {
        let (settings, _) = ServeSettings::resolve(keyed(), false).unwrap();
        assert_eq!(settings.engine.0.event_sink, SinkChoice::Jsonl);
        let file: ServeConfig = toml::from_str(
            "event_sink = \"nats\"\nnats_stream = \"ORDERS\"\nnats_subject_prefix = \"shop.events\"\nnats_duplicate_window_secs = 600",
        )
        .unwrap();
        let (settings, _) = ServeSettings::resolve(file.or(keyed()), false).unwrap();
        let SinkChoice::Nats(nats) = &settings.engine.0.event_sink else { panic!("not nats") };
        assert_eq!(nats.url, "nats://127.0.0.1:4222");
        assert_eq!((nats.stream.as_str(), nats.subject_prefix.as_str()), ("ORDERS", "shop.events"));
        assert_eq!(nats.duplicate_window, Duration::from_secs(600));
        assert_eq!(nats.timeout, Duration::from_secs(5));
        assert!(toml::from_str::<ServeConfig>("event_sink = \"rabbitmq\"").is_err());
        let bad =
            ServeConfig { event_sink: Some(EventSinkKind::Nats), nats_subject_prefix: Some("a.>".into()), ..keyed() };
        let error = ServeSettings::resolve(bad, false).unwrap_err().to_string();
        assert!(error.contains("SMARTMART_NATS_SUBJECT_PREFIX"), "{error}");
    }

    #[test]
    fn nats_tls_and_credentials_come_from_the_file_and_conflicts_are_refused() {
        let file: ServeConfig = toml::from_str(
            "event_sink = \"nats\"\nnats_url = \"tls://nats.internal:4222\"\nnats_tls = \"required\"\n\
             nats_ca_file = \"/etc/nats/ca.pem\"\nnats_client_cert_file = \"/etc/nats/client.pem\"\n\
             nats_client_key_file = \"/etc/nats/client.key\"\nnats_user = \"smartmart\"\n\
             nats_password = \"nats-password-0123456789\"",
        )
        .unwrap();
        let (settings, _) = ServeSettings::resolve(file.or(keyed()), false).unwrap();
        let SinkChoice::Nats(nats) = &settings.engine.0.event_sink else { panic!("not nats") };
        assert!(nats.tls.required);
        assert_eq!(nats.tls.ca_file.as_deref(), Some(Path::new("/etc/nats/ca.pem")));
        let client = nats.tls.client_cert.as_ref().expect("a client certificate");
        assert_eq!(
            (client.cert_file.to_str(), client.key_file.to_str()),
            (Some("/etc/nats/client.pem"), Some("/etc/nats/client.key"))
        );
        assert_eq!(
            nats.auth,
            NatsAuth::UserPassword { user: "smartmart".into(), password: "nats-password-0123456789".into() }
        );
        assert!(!format!("{settings:?}").contains("0123456789"), "the password never shows");
        for (toml, auth) in [
            ("nats_token = \"t0ken\"", NatsAuth::Token("t0ken".into())),
            ("nats_nkey_seed = \"SUAB\"", NatsAuth::NKeySeed("SUAB".into())),
            ("nats_creds_file = \"/etc/nats/svc.creds\"", NatsAuth::CredsFile("/etc/nats/svc.creds".into())),
        ] {
            let file: ServeConfig = toml::from_str(&format!("event_sink = \"nats\"\n{toml}")).unwrap();
            let (settings, _) = ServeSettings::resolve(file.or(keyed()), false).unwrap();
            let SinkChoice::Nats(nats) = &settings.engine.0.event_sink else { panic!("not nats") };
            assert_eq!(nats.auth, auth);
            assert_eq!(nats.tls, NatsTls::default(), "TLS as the server asks");
        }
        assert!(toml::from_str::<ServeConfig>("nats_tls = \"sometimes\"").is_err());

        let nats = |config: ServeConfig| ServeConfig { event_sink: Some(EventSinkKind::Nats), ..config };
        let text = |s: &str| Some(s.to_string());
        for (bad, says) in [
            (ServeConfig { nats_client_cert_file: Some("c.pem".into()), ..keyed() }, "SMARTMART_NATS_CLIENT_KEY_FILE"),
            (ServeConfig { nats_client_key_file: Some("k.pem".into()), ..keyed() }, "SMARTMART_NATS_CLIENT_CERT_FILE"),
            (ServeConfig { nats_user: text("svc"), ..keyed() }, "SMARTMART_NATS_PASSWORD is not"),
            (
                ServeConfig { nats_token: text("t0ken"), nats_creds_file: Some("a.creds".into()), ..keyed() },
                "conflicting NATS credentials: SMARTMART_NATS_TOKEN and SMARTMART_NATS_CREDS_FILE are set",
            ),
            (
                ServeConfig { nats_url: text("nats://svc:pw@n:4222"), nats_token: text("t0ken"), ..keyed() },
                "SMARTMART_NATS_URL carries `user:password@` or `token@`, and the token of SMARTMART_NATS_TOKEN",
            ),
        ] {
            let error = ServeSettings::resolve(nats(bad), false).unwrap_err().to_string();
            assert!(error.contains(says), "{error}");
            assert!(!error.contains("t0ken") && !error.contains(":pw"), "no secret in {error}");
        }
    }

    #[test]
    fn kafka_takes_its_settings_from_the_file_and_checks_them() {
        let file: ServeConfig = toml::from_str(
            "event_sink = \"kafka\"\nkafka_brokers = \"k1:9092, k2:9093\"\nkafka_topic_prefix = \"shop.events\"\n\
             kafka_partitions = 6\nkafka_replication_factor = 3\nkafka_timeout_ms = 2500",
        )
        .unwrap();
        let (settings, _) = ServeSettings::resolve(file.or(keyed()), false).unwrap();
        let SinkChoice::Kafka(kafka) = &settings.engine.0.event_sink else { panic!("not kafka") };
        assert_eq!(kafka.brokers, ["k1:9092", "k2:9093"]);
        assert_eq!(kafka.topic(crate::domain::status::EventKind::Fraud), "shop.events.fraud");
        assert_eq!((kafka.partitions, kafka.replication_factor), (6, 3));
        assert_eq!(kafka.timeout, Duration::from_millis(2500));
        let defaults = ServeConfig { event_sink: Some(EventSinkKind::Kafka), ..keyed() };
        let (settings, _) = ServeSettings::resolve(defaults, false).unwrap();
        assert_eq!(settings.engine.0.event_sink, SinkChoice::Kafka(KafkaSettings::default()));
        for (bad, key) in [
            (ServeConfig { kafka_brokers: Some("kafka-without-port".into()), ..keyed() }, "SMARTMART_KAFKA_BROKERS"),
            (ServeConfig { kafka_brokers: Some(" , ".into()), ..keyed() }, "SMARTMART_KAFKA_BROKERS"),
            (ServeConfig { kafka_topic_prefix: Some("a b".into()), ..keyed() }, "SMARTMART_KAFKA_TOPIC_PREFIX"),
            (ServeConfig { kafka_partitions: Some(0), ..keyed() }, "SMARTMART_KAFKA_PARTITIONS"),
        ] {
            let bad = ServeConfig { event_sink: Some(EventSinkKind::Kafka), ..bad };
            let error = ServeSettings::resolve(bad, false).unwrap_err().to_string();
            assert!(error.contains(key), "{error}");
        }
    }

    #[test]
    fn kafka_tls_and_sasl_are_read_together_and_checked() {
        let kafka = |config: ServeConfig| {
            let config = ServeConfig { event_sink: Some(EventSinkKind::Kafka), ..config };
            match ServeSettings::resolve(config, false).map(|(s, _)| s.engine.0.event_sink) {
                Ok(SinkChoice::Kafka(settings)) => Ok(settings),
                Ok(other) => panic!("not kafka: {other:?}"),
                Err(e) => Err(e.to_string()),
            }
        };
        let defaults = kafka(keyed()).unwrap();
        assert_eq!((defaults.tls, defaults.sasl), (None, None), "plaintext, no SASL");

        let file: ServeConfig = toml::from_str(
            "kafka_ca_file = \"/etc/kafka/ca.pem\"\nkafka_client_cert_file = \"c.pem\"\n\
             kafka_client_key_file = \"k.pem\"\nkafka_sasl_mechanism = \"scram-sha-512\"\n\
             kafka_sasl_username = \"shop\"\nkafka_sasl_password = \"kafka-pa55word\"",
        )
        .unwrap();
        let settings = kafka(file.or(keyed())).unwrap();
        let tls = settings.tls.clone().expect("a CA file implies TLS");
        assert_eq!(tls.ca_file.as_deref(), Some(Path::new("/etc/kafka/ca.pem")));
        let client = tls.client_certificate.expect("the client certificate");
        assert_eq!((client.cert_file.as_path(), client.key_file.as_path()), (Path::new("c.pem"), Path::new("k.pem")));
        let sasl = settings.sasl.clone().expect("SASL");
        assert_eq!((sasl.mechanism, sasl.username.as_str()), (SaslMechanism::ScramSha512, "shop"));
        assert_eq!(sasl.password, "kafka-pa55word");
        assert!(!format!("{settings:?}").contains("pa55word"), "{settings:?}");

        let required = kafka(ServeConfig { kafka_tls: Some(KafkaTlsMode::Required), ..keyed() }).unwrap();
        assert_eq!(required.tls, Some(KafkaTls::default()), "the system's roots");
        let text = |s: &str| Some(s.to_string());
        for (bad, names) in [
            (
                ServeConfig { kafka_client_cert_file: Some("c.pem".into()), ..keyed() },
                "SMARTMART_KAFKA_CLIENT_KEY_FILE",
            ),
            (
                ServeConfig { kafka_client_key_file: Some("k.pem".into()), ..keyed() },
                "SMARTMART_KAFKA_CLIENT_CERT_FILE",
            ),
            (
                ServeConfig {
                    kafka_tls: Some(KafkaTlsMode::Disabled),
                    kafka_ca_file: Some("ca.pem".into()),
                    ..keyed()
                },
                "SMARTMART_KAFKA_TLS",
            ),
            (ServeConfig { kafka_sasl_mechanism: text("GSSAPI"), ..keyed() }, "SMARTMART_KAFKA_SASL_MECHANISM"),
            (ServeConfig { kafka_sasl_mechanism: text("PLAIN"), ..keyed() }, "SMARTMART_KAFKA_SASL_USERNAME"),
            (
                ServeConfig { kafka_sasl_mechanism: text("PLAIN"), kafka_sasl_username: text("shop"), ..keyed() },
                "SMARTMART_KAFKA_SASL_PASSWORD",
            ),
            (
                ServeConfig { kafka_sasl_username: text("shop"), kafka_sasl_password: text("secret"), ..keyed() },
                "SMARTMART_KAFKA_SASL_MECHANISM",
            ),
        ] {
            let error = kafka(bad).unwrap_err();
            assert!(error.contains(names), "{error}");
            assert!(!error.contains("secret"), "{error}");
        }
    }

    #[test]
    fn the_replay_gate_replays_200_orders_unless_configured() {
        let (settings, _) = ServeSettings::resolve(keyed(), false).unwrap();
        assert_eq!(settings.engine.0.reload_replay_orders, 200);
        let file: ServeConfig = toml::from_str("reload_replay_orders = 0").unwrap();
        let (settings, _) = ServeSettings::resolve(file.or(keyed()), false).unwrap();
        assert_eq!(settings.engine.0.reload_replay_orders, 0, "examples only");
        let huge = ServeConfig { reload_replay_orders: Some(1_000_000), ..keyed() };
        let error = ServeSettings::resolve(huge, false).unwrap_err().to_string();
        assert!(error.contains("SMARTMART_RELOAD_REPLAY_ORDERS"), "{error}");
    }

    #[test]
    fn durations_are_numbers_with_units() {
        for (text, ms) in [
            ("24h", 24 * 3_600_000),
            ("7d", 7 * 86_400_000),
            ("90m", 90 * 60_000),
            ("1h30m", 90 * 60_000),
            (" 1h 30m ", 90 * 60_000),
            ("2 d", 2 * 86_400_000),
            ("1s", 1_000),
            ("500ms", 500),
            ("2m3s4ms", 123_004),
        ] {
            assert_eq!(parse_duration(text).unwrap(), Duration::from_millis(ms), "{text}");
        }
        for (bad, says) in [
            ("", "empty"),
            ("24", "no unit"),
            ("h", "expected a number"),
            ("1.5h", "has no unit"),
            ("-1h", "expected a number"),
            ("10x", "unknown unit `x`"),
            ("10 hours", "unknown unit `hours`"),
            ("99999999999999999999d", "too large"),
            ("999999999999999d", "too large"),
        ] {
            let error = parse_duration(bad).unwrap_err().to_string();
            assert!(error.contains(says), "{bad:?}: {error}");
        }
    }

    #[test]
    fn retention_windows_default_and_are_checked() {
        let (settings, _) = ServeSettings::resolve(keyed(), false).unwrap();
        let retention = &settings.engine.0.retention;
        assert_eq!(retention, &RetentionSettings::default());
        assert_eq!(retention.idempotency, Duration::from_secs(24 * 3600), "the 24 hours docs/api.md promises");
        assert_eq!(retention.delivered_events, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(retention.every(), Duration::from_secs(60));

        let file: ServeConfig = toml::from_str(
            "retention_idempotency = \"36h\"\nretention_delivered_events = \"2d\"\n\
             retention_shadow_runs = \"12h\"\nretention_shadow_runs_max_rows = 5000\n\
             retention_rollout_events = \"1h30m\"\nretention_rollout_events_max_rows = 100",
        )
        .unwrap();
        let (settings, _) = ServeSettings::resolve(file.or(keyed()), false).unwrap();
        let retention = &settings.engine.0.retention;
        assert_eq!(retention.idempotency, Duration::from_secs(36 * 3600));
        assert_eq!(retention.delivered_events, Duration::from_secs(2 * 24 * 3600));
        assert_eq!((retention.shadow_runs, retention.shadow_runs_max_rows), (Duration::from_secs(12 * 3600), 5000));
        assert_eq!((retention.rollout_events, retention.rollout_events_max_rows), (Duration::from_secs(5400), 100));
        assert_eq!(retention.every(), Duration::from_secs(60));

        let text = |s: &str| Some(s.to_string());
        for (bad, name, says) in [
            (
                ServeConfig { retention_idempotency: text("24"), ..keyed() },
                "SMARTMART_RETENTION_IDEMPOTENCY",
                "no unit",
            ),
            (
                ServeConfig { retention_idempotency: text("30m"), ..keyed() },
                "SMARTMART_RETENTION_IDEMPOTENCY",
                "between 1h and 3650d",
            ),
            (
                ServeConfig { retention_delivered_events: text("7 days"), ..keyed() },
                "SMARTMART_RETENTION_DELIVERED_EVENTS",
                "unknown unit",
            ),
            (
                ServeConfig { retention_delivered_events: text("0s"), ..keyed() },
                "SMARTMART_RETENTION_DELIVERED_EVENTS",
                "between 1m",
            ),
            (
                ServeConfig { retention_shadow_runs: text("4000d"), ..keyed() },
                "SMARTMART_RETENTION_SHADOW_RUNS",
                "3650d",
            ),
            (
                ServeConfig { retention_rollout_events: text(""), ..keyed() },
                "SMARTMART_RETENTION_ROLLOUT_EVENTS",
                "empty",
            ),
            (
                ServeConfig { retention_shadow_runs_max_rows: Some(10), ..keyed() },
                "SMARTMART_RETENTION_SHADOW_RUNS_MAX_ROWS",
                "1000..=",
            ),
            (
                ServeConfig { retention_rollout_events_max_rows: Some(99), ..keyed() },
                "SMARTMART_RETENTION_ROLLOUT_EVENTS_MAX_ROWS",
                "100..=",
            ),
        ] {
            let error = ServeSettings::resolve(bad, false).unwrap_err().to_string();
            assert!(error.contains(name) && error.contains(says), "{error}");
        }
    }

    #[test]
    fn the_otlp_endpoint_gets_the_traces_path_and_a_bad_one_is_refused_by_name() {
        let traces = |endpoint: &str| {
            ServeConfig { otlp_endpoint: Some(endpoint.into()), ..ServeConfig::default() }.otlp_traces_endpoint()
        };
        assert_eq!(ServeConfig::default().otlp_traces_endpoint().unwrap(), None, "unset: no exporter");
        assert_eq!(traces("  ").unwrap(), None, "empty: no exporter");
        assert_eq!(traces("http://collector:4318").unwrap().as_deref(), Some("http://collector:4318/v1/traces"));
        assert_eq!(
            traces("https://otel.example/ingest/").unwrap().as_deref(),
            Some("https://otel.example/ingest/v1/traces")
        );
        for bad in ["collector:4318", "ftp://collector", "http://", "http://collector:4318/?a=b", "not a url"] {
            let error = traces(bad).unwrap_err().to_string();
            assert!(error.contains("SMARTMART_OTLP_ENDPOINT"), "{bad}: {error}");
        }
        let error = traces("https://key:s3cret@otel.example").unwrap_err().to_string();
        assert!(error.contains("OTEL_EXPORTER_OTLP_HEADERS") && !error.contains("s3cret"), "{error}");
        let file: ServeConfig = toml::from_str("otlp_endpoint = \"http://collector:4318\"").unwrap();
        let cli = ServeConfig { otlp_endpoint: Some("http://other:4318".into()), ..ServeConfig::default() };
        assert_eq!(cli.or(file).otlp_endpoint.as_deref(), Some("http://other:4318"), "the command line wins");
    }

    #[test]
    fn the_log_format_is_text_unless_json_is_asked_for() {
        assert_eq!(LogFormat::default(), LogFormat::Text);
        assert_eq!(LogFormat::parse("json").unwrap(), LogFormat::Json);
        assert_eq!(LogFormat::parse(" JSON ").unwrap(), LogFormat::Json);
        assert_eq!(LogFormat::parse("text").unwrap(), LogFormat::Text);
        assert!(LogFormat::parse("xml").unwrap_err().to_string().contains("SMARTMART_LOG_FORMAT"));
        let file: ServeConfig = toml::from_str("log_format = \"json\"").unwrap();
        assert_eq!(file.log_format, Some(LogFormat::Json));
        assert!(toml::from_str::<ServeConfig>("log_format = \"xml\"").is_err());
        let cli = ServeConfig { log_format: Some(LogFormat::Text), ..ServeConfig::default() };
        assert_eq!(cli.or(file).log_format, Some(LogFormat::Text), "the command line wins");
    }

    /// An environment of these variables only.
    fn env_of(vars: &[(&str, &Path)]) -> impl Fn(&str) -> Option<OsString> + use<> {
        let vars: BTreeMap<String, OsString> =
            vars.iter().map(|(k, v)| (k.to_string(), v.as_os_str().to_owned())).collect();
        move |name| vars.get(name).cloned()
    }

    #[test]
    fn secrets_come_from_files_with_one_trailing_newline_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let admin = write("admin", "admin-key-from-file-0123\n");
        let identity = write("identity", "identity-secret-from-file\r\n");
        let channels = write("channels", "web:web-key-from-file-0123");
        let two_lines = write("two-lines", "pseudonym-key  \n\n");
        let env = env_of(&[
            ("SMARTMART_ADMIN_KEY_FILE", &admin),
            ("SMARTMART_IDENTITY_SECRET_FILE", &identity),
            ("SMARTMART_CHANNEL_KEYS_FILE", &channels),
            ("SMARTMART_PSEUDONYM_KEY_FILE", &two_lines),
        ]);
        let config = ServeConfig::default().with_secret_files(&env).unwrap();
        assert_eq!(config.admin_key.as_deref(), Some("admin-key-from-file-0123"));
        assert_eq!(config.identity_secret.as_deref(), Some("identity-secret-from-file"));
        assert_eq!(config.channel_keys.as_deref(), Some("web:web-key-from-file-0123"));
        assert_eq!(config.pseudonym_key.as_deref(), Some("pseudonym-key  \n"), "one newline only");
        assert_eq!((config.database_url.as_deref(), config.nats_url.as_deref()), (None, None));
        let (settings, generated) = ServeSettings::resolve(config, false).unwrap();
        assert!(!generated);
        assert_eq!(settings.credentials.admin_key, "admin-key-from-file-0123");

        // The command line wins over the file, the file over the config file.
        let cli = ServeConfig { admin_key: Some("admin-key-from-the-flag".into()), ..ServeConfig::default() };
        let config = cli.with_secret_files(&env).unwrap().or(keyed());
        assert_eq!(config.admin_key.as_deref(), Some("admin-key-from-the-flag"));
        assert_eq!(config.identity_secret.as_deref(), Some("identity-secret-from-file"));
        let empty_flag = ServeConfig { admin_key: Some(String::new()), ..ServeConfig::default() };
        let config = empty_flag.with_secret_files(&env).unwrap();
        assert_eq!(config.admin_key.as_deref(), Some("admin-key-from-file-0123"), "an empty value is no value");

        let url = write("url", "postgres://smartmart:pa55word@db/smartmart\n");
        let nats = write("nats", "nats://user:pa55word@nats:4222\n");
        let kafka = write("kafka", "kafka-pa55word\n");
        let env = env_of(&[
            ("SMARTMART_DATABASE_URL_FILE", &url),
            ("SMARTMART_NATS_URL_FILE", &nats),
            ("SMARTMART_KAFKA_SASL_PASSWORD_FILE", &kafka),
        ]);
        let config = ServeConfig::default().with_secret_files(&env).unwrap();
        assert_eq!(config.database_url.as_deref(), Some("postgres://smartmart:pa55word@db/smartmart"));
        assert_eq!(config.nats_url.as_deref(), Some("nats://user:pa55word@nats:4222"));
        assert_eq!(config.kafka_sasl_password.as_deref(), Some("kafka-pa55word"));
        let password = write("nats-password", "nats-pa55word\n");
        let token = write("nats-token", "nats-t0ken\n");
        let seed = write("nats-seed", "SUAB-seed\n");
        let env = env_of(&[
            ("SMARTMART_NATS_PASSWORD_FILE", &password),
            ("SMARTMART_NATS_TOKEN_FILE", &token),
            ("SMARTMART_NATS_NKEY_SEED_FILE", &seed),
        ]);
        let config = ServeConfig::default().with_secret_files(&env).unwrap();
        assert_eq!(config.nats_password.as_deref(), Some("nats-pa55word"));
        assert_eq!(config.nats_token.as_deref(), Some("nats-t0ken"));
        assert_eq!(config.nats_nkey_seed.as_deref(), Some("SUAB-seed"));
        assert_eq!(secret_from_file("SMARTMART_ADMIN_KEY", &env_of(&[])).unwrap(), None);
    }

    #[test]
    fn secret_files_are_refused_when_both_set_missing_or_empty() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "admin-key-from-file-0123\n").unwrap();
        let env = env_of(&[
            ("SMARTMART_ADMIN_KEY", Path::new("admin-key-in-env-0123")),
            ("SMARTMART_ADMIN_KEY_FILE", &secret),
        ]);
        let error = ServeConfig::default().with_secret_files(&env).unwrap_err().to_string();
        assert!(error.contains("SMARTMART_ADMIN_KEY ") && error.contains("SMARTMART_ADMIN_KEY_FILE"), "{error}");
        assert!(!error.contains("0123"), "no value in {error}");

        let missing = dir.path().join("missing");
        let env = env_of(&[("SMARTMART_IDENTITY_SECRET_FILE", &missing)]);
        let error = ServeConfig::default().with_secret_files(&env).unwrap_err().to_string();
        assert!(error.contains("SMARTMART_IDENTITY_SECRET_FILE"), "{error}");
        assert!(error.contains(&missing.display().to_string()), "{error}");

        for content in ["", "\n", "\r\n"] {
            let empty = dir.path().join("empty");
            std::fs::write(&empty, content).unwrap();
            let env = env_of(&[("SMARTMART_DATABASE_URL_FILE", &empty)]);
            let error = ServeConfig::default().with_secret_files(&env).unwrap_err().to_string();
            assert!(error.contains("SMARTMART_DATABASE_URL_FILE") && error.contains("is empty"), "{error}");
            assert!(error.contains(&empty.display().to_string()), "{error}");
        }

        let binary = dir.path().join("binary");
        std::fs::write(&binary, [0xff, 0xfe, b's', b'e', b'c']).unwrap();
        let error = secret_from_file("SMARTMART_NATS_URL", &env_of(&[("SMARTMART_NATS_URL_FILE", &binary)]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("SMARTMART_NATS_URL_FILE") && error.contains("UTF-8"), "{error}");
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let (settings, _) = ServeSettings::resolve(keyed(), false).unwrap();
        let text = format!("{settings:?}");
        assert!(!text.contains("0123456789"), "{text}");
        let kafka = ServeConfig {
            event_sink: Some(EventSinkKind::Kafka),
            kafka_sasl_mechanism: Some("SCRAM-SHA-256".into()),
            kafka_sasl_username: Some("shop".into()),
            kafka_sasl_password: Some("kafka-0123456789".into()),
            ..keyed()
        };
        let (settings, _) = ServeSettings::resolve(kafka, false).unwrap();
        let text = format!("{settings:?}");
        assert!(text.contains("ScramSha256") && !text.contains("0123456789"), "{text}");
    }

    #[test]
    fn debug_shows_every_setting_but_no_secret() {
        let config = ServeConfig {
            listen: Some("127.0.0.1:8080".parse().unwrap()),
            channel_keys: Some("web:channel-key-web-0123456789".into()),
            admin_key: Some("admin-key-0123456789".into()),
            identity_secret: Some("identity-secret-0123456789".into()),
            pseudonym_key: Some("pseudonym-key-0123456789".into()),
            database_url: Some("postgres://shop:pg-password-1@db.internal:5432/shop?password=pg-password-2".into()),
            nats_url: Some("nats://events:nats-url-password@nats.internal:4222".into()),
            nats_password: Some("nats-password-0123".into()),
            nats_token: Some("nats-token-0123".into()),
            nats_nkey_seed: Some("SUANATSSEED0123".into()),
            nats_client_key_file: Some("/etc/smartmart/nats-client.key".into()),
            kafka_sasl_username: Some("shop".into()),
            kafka_sasl_password: Some("kafka-password-0123".into()),
            ..Default::default()
        };
        let shown = format!("{config:?}");
        for secret in [
            "channel-key-web-0123456789",
            "admin-key-0123456789",
            "identity-secret-0123456789",
            "pseudonym-key-0123456789",
            "pg-password-1",
            "pg-password-2",
            "nats-url-password",
            "nats-password-0123",
            "nats-token-0123",
            "SUANATSSEED0123",
            "kafka-password-0123",
        ] {
            assert!(!shown.contains(secret), "{secret} shown: {shown}");
        }
        for visible in [
            "127.0.0.1:8080",
            "postgres://shop:<redacted>@db.internal:5432/shop?password=<redacted>",
            "nats://events:<redacted>@nats.internal:4222",
            "/etc/smartmart/nats-client.key",
            "kafka_sasl_username: String(\"shop\")",
            "data_dir: None",
        ] {
            assert!(shown.contains(visible), "{visible} not shown: {shown}");
        }
    }

    #[test]
    fn file_rejects_unknown_keys_and_the_command_line_wins() {
        assert!(toml::from_str::<ServeConfig>("listen = \"127.0.0.1:9\"\nbogus = 1").is_err());
        let file: ServeConfig = toml::from_str("currency = \"EUR\"\nfraud_threshold_cents = 10").unwrap();
        let cli = ServeConfig { currency: Some("GBP".into()), ..ServeConfig::default() };
        let merged = cli.or(file);
        assert_eq!(merged.currency.as_deref(), Some("GBP"));
        assert_eq!(merged.fraud_threshold_cents, Some(10));
    }
}
