//! The NATS JetStream sink: each event is published to
//! `<prefix>.<type>` (`audit`, `analytics`, `fraud`) with its event id as
//! the `Nats-Msg-Id` header, and a batch counts as delivered only once
//! JetStream has acknowledged every message of it (stored in the stream).
//!
//! Exactly once without positions: the outbox marks a batch delivered after
//! the acks, so a crash between the acks and the marks, a lost ack or a
//! batch that failed half-way makes the dispatcher publish the same events
//! again, and the stream drops every id it has seen within its duplicate
//! window (`SMARTMART_NATS_DUPLICATE_WINDOW_SECS`, one day by default). An
//! event held back longer than the window (the broker down for over a day)
//! and then delivered twice would be stored twice; consumers that must be
//! strict keep the event id too.
//!
//! A broker that is down never holds up an order: events wait in the
//! outbox, where they were written with the order. Connecting, every
//! JetStream API request and each publish ack are bounded by the timeout,
//! so a dispatcher pass fails fast and backs off; the service starts and
//! serves orders while NATS is unreachable, connects on the next delivery
//! attempt, and the client reconnects by itself once it has been connected.
//!
//! The stream (`SMARTMART_NATS_STREAM`) is created at the first connection
//! when it is missing: subjects `<prefix>.>`, file storage, the configured
//! duplicate window, and a description that marks it as SmartMart's. A
//! stream of that name that carries the mark follows the configuration
//! (subjects and duplicate window are updated; storage cannot change and is
//! only reported). A stream without the mark belongs to someone else: it is
//! never changed; differences are logged, and deliveries fail with an
//! explanation when it does not capture the event subjects.
//!
//! TLS ([`NatsTls`]) and credentials ([`NatsAuth`]) are set up when the sink
//! is made (a bad file fails the start); a connection that fails is
//! explained ([`NatsConnectError`]): an untrusted certificate, refused
//! credentials and an unreachable server each say what to look at.

use std::str::FromStr as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::connection::State;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use async_nats::jetstream::{self, Context};
use tokio::sync::Mutex;

pub use super::nats_auth::NatsAuth;
pub use super::nats_connect_error::NatsConnectError;
pub use super::nats_tls::{ClientCertificate, NatsTls};
use super::{EventSink, SinkEvent};
use crate::domain::status::EventKind;
use crate::store::outbox::SinkPosition;

/// The description of a stream this service created; the mark of "ours".
pub const STREAM_DESCRIPTION: &str =
    "SmartMart order events (created by smartmart; subjects and duplicate window follow its SMARTMART_NATS_* settings)";

/// Where and how events are published. `Debug` hides every secret.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsSettings {
    /// Server URL, e.g. `nats://127.0.0.1:4222` or `tls://…` (may carry
    /// `user:password@` or `token@` instead of `auth`).
    pub url: String,
    /// JetStream stream name.
    pub stream: String,
    /// Subjects are `<prefix>.audit`, `<prefix>.analytics`, `<prefix>.fraud`.
    pub subject_prefix: String,
    /// The stream drops a message whose `Nats-Msg-Id` it saw within this window.
    pub duplicate_window: Duration,
    /// Bounds connecting, each JetStream API request and each publish ack.
    pub timeout: Duration,
    /// TLS: whether it is required, the roots, the client certificate.
    pub tls: NatsTls,
    /// The credentials (besides any in the URL, which may not be combined with them).
    pub auth: NatsAuth,
}

impl Default for NatsSettings {
    fn default() -> NatsSettings {
        NatsSettings {
            url: "nats://127.0.0.1:4222".into(),
            stream: "SMARTMART_EVENTS".into(),
            subject_prefix: "smartmart.events".into(),
            duplicate_window: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(5),
            tls: NatsTls::default(),
            auth: NatsAuth::None,
        }
    }
}

impl std::fmt::Debug for NatsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSettings")
            .field("url", &self.display_url())
            .field("stream", &self.stream)
            .field("subject_prefix", &self.subject_prefix)
            .field("duplicate_window", &self.duplicate_window)
            .field("timeout", &self.timeout)
            .field("tls", &self.tls)
            .field("auth", &self.auth)
            .finish()
    }
}

impl NatsSettings {
    /// The URL without its credentials, for logs and errors.
    pub fn display_url(&self) -> String {
        match self.url.split_once("://") {
            Some((scheme, rest)) => match rest.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://***@{host}"),
                None => self.url.clone(),
            },
            None => self.url.clone(),
        }
    }

    /// The subject events of type `kind` are published to.
    pub fn subject(&self, kind: EventKind) -> String {
        format!("{}.{kind}", self.subject_prefix)
    }

    /// The stream as this service creates it.
    pub fn stream_config(&self) -> StreamConfig {
        StreamConfig {
            name: self.stream.clone(),
            description: Some(STREAM_DESCRIPTION.into()),
            subjects: vec![format!("{}.>", self.subject_prefix)],
            storage: StorageType::File,
            duplicate_window: self.duplicate_window,
            ..StreamConfig::default()
        }
    }

    /// Checks every value; the errors name the setting.
    pub fn validate(&self) -> anyhow::Result<()> {
        let token_ok =
            |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !self.url.starts_with("nats://") && !self.url.starts_with("tls://") {
            bail!("SMARTMART_NATS_URL must be a nats:// or tls:// URL, got `{}`", self.display_url());
        }
        let (url, in_url) = NatsAuth::split_url(&self.url);
        if let Err(e) = async_nats::ServerAddr::from_str(&url) {
            bail!("SMARTMART_NATS_URL `{}` is not a server address: {e}", self.display_url());
        }
        if in_url.is_set() && self.auth.is_set() {
            bail!(
                "conflicting NATS credentials: SMARTMART_NATS_URL carries `user:password@` or `token@`, and {} \
                 is configured as well; keep one of them",
                self.auth.describe(false)
            );
        }
        if !token_ok(&self.stream) {
            bail!("SMARTMART_NATS_STREAM must be letters, digits, `_` and `-` only, got `{}`", self.stream);
        }
        if !self.subject_prefix.split('.').all(token_ok) {
            bail!(
                "SMARTMART_NATS_SUBJECT_PREFIX must be dot-separated tokens of letters, digits, `_` and `-` \
                 (no wildcards), got `{}`",
                self.subject_prefix
            );
        }
        if self.duplicate_window.is_zero() {
            bail!("SMARTMART_NATS_DUPLICATE_WINDOW_SECS must be positive");
        }
        if self.timeout.is_zero() {
            bail!("SMARTMART_NATS_TIMEOUT_MS must be positive");
        }
        Ok(())
    }
}

/// Publishes events to NATS JetStream (see the module documentation).
pub struct NatsSink {
    settings: NatsSettings,
    /// The TLS client configuration when TLS is required (its files read at start).
    tls: Option<rustls::ClientConfig>,
    /// The connection once made, and whether the stream was checked on it.
    /// Held across connecting, so one attempt runs at a time.
    state: Mutex<Connection>,
}

#[derive(Default)]
struct Connection {
    jetstream: Option<Context>,
    stream_checked: bool,
}

impl NatsSink {
    /// A sink that connects on its first use (`connect_now` or a delivery):
    /// nothing here waits for the broker. The TLS files and the credentials
    /// are read and checked now: a bad one fails, naming its variable.
    pub fn new(settings: NatsSettings) -> anyhow::Result<NatsSink> {
        settings.validate()?;
        let tls = settings.tls.client_config(&settings.url)?;
        settings.auth.check()?;
        Ok(NatsSink { settings, tls, state: Mutex::default() })
    }

    pub fn settings(&self) -> &NatsSettings {
        &self.settings
    }

    /// Connects and checks (or creates) the stream now; for start-up, off
    /// the path that serves orders. Failing here only means the events wait.
    pub async fn connect_now(&self) -> anyhow::Result<()> {
        self.ready().await.map(drop)
    }

    /// The JetStream context, connected and with the stream checked.
    async fn ready(&self) -> anyhow::Result<Context> {
        let mut state = self.state.lock().await;
        let jetstream = match &state.jetstream {
            Some(jetstream) => jetstream.clone(),
            None => {
                let jetstream = self.connect().await?;
                state.jetstream = Some(jetstream.clone());
                jetstream
            }
        };
        if jetstream.client().connection_state() != State::Connected {
            // Publishing now would only queue in the client; fail fast, the
            // dispatcher backs off and the client keeps reconnecting.
            bail!(
                "not connected to NATS at {} (reconnecting); the events wait in the outbox",
                self.settings.display_url()
            );
        }
        if !state.stream_checked {
            self.ensure_stream(&jetstream).await?;
            state.stream_checked = true;
        }
        Ok(jetstream)
    }

    async fn connect(&self) -> anyhow::Result<Context> {
        let timeout = self.settings.timeout;
        let (url, in_url) = NatsAuth::split_url(&self.settings.url);
        let mut options = async_nats::ConnectOptions::new()
            .name("smartmart")
            .connection_timeout(timeout)
            .request_timeout(Some(timeout))
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("NATS connection (re)established"),
                    async_nats::Event::Disconnected => {
                        tracing::warn!("NATS connection lost; reconnecting, events wait in the outbox")
                    }
                    // A reconnection refused (credentials revoked, a certificate replaced).
                    error @ (async_nats::Event::ClientError(_) | async_nats::Event::ServerError(_)) => {
                        tracing::warn!(event = %error, "NATS client error; events wait in the outbox")
                    }
                    other => tracing::info!(event = %other, "NATS client event"),
                }
            });
        if let Some(tls) = &self.tls {
            options = options.require_tls(true).tls_client_config(tls.clone());
        }
        // Credentials in the URL are the client's only when set as options:
        // async-nats never reads them from the URL.
        let auth = if self.settings.auth.is_set() { &self.settings.auth } else { &in_url };
        let options = auth.apply(options).await?;
        // The client bounds each attempt by the connection timeout; the outer
        // bound covers name resolution and the handshake as a whole.
        let bound = timeout * 2;
        let client = match tokio::time::timeout(bound, options.connect(url.as_str())).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(NatsConnectError::explain(&e, &self.settings).into()),
            Err(_) => return Err(NatsConnectError::timed_out(&self.settings, bound).into()),
        };
        tracing::info!(url = %self.settings.display_url(), "connected to NATS");
        Ok(jetstream::ContextBuilder::new().timeout(timeout).ack_timeout(timeout).build(client))
    }

    /// Creates the stream when missing; reconciles it when it is ours; reports it when it is not.
    async fn ensure_stream(&self, jetstream: &Context) -> anyhow::Result<()> {
        let wanted = self.settings.stream_config();
        let name = &self.settings.stream;
        let stream = jetstream
            .get_or_create_stream(wanted.clone())
            .await
            .with_context(|| format!("looking up or creating the JetStream stream {name}"))?;
        let existing = &stream.cached_info().config;
        let subjects: Vec<String> = EventKind::ALL.iter().map(|&k| self.settings.subject(k)).collect();
        let differences = differences(existing, &wanted, &subjects);
        if differences.is_empty() {
            tracing::info!(stream = %name, subjects = ?wanted.subjects, "JetStream stream ready");
            return Ok(());
        }
        if existing.description.as_deref() == Some(STREAM_DESCRIPTION) {
            // Ours: follow the configuration. Storage cannot be changed on a
            // live stream, so it stays as it is and is reported.
            let mut config = existing.clone();
            config.subjects = wanted.subjects.clone();
            config.duplicate_window = wanted.duplicate_window;
            jetstream
                .update_stream(config)
                .await
                .with_context(|| format!("updating the JetStream stream {name} to the configured settings"))?;
            tracing::warn!(stream = %name, was = %differences.join("; "), "updated the SmartMart JetStream stream to the configured settings");
            if existing.storage != StorageType::File {
                tracing::warn!(stream = %name, "the stream keeps memory storage (storage cannot change): events are lost when NATS restarts; recreate it to get file storage");
            }
            return Ok(());
        }
        tracing::warn!(
            stream = %name,
            differences = %differences.join("; "),
            "the JetStream stream exists with other settings and was not created by SmartMart: left as it is"
        );
        if let Some(missing) = subjects.iter().find(|s| !existing.subjects.iter().any(|p| subject_matches(p, s))) {
            bail!(
                "the JetStream stream {name} exists, was not created by SmartMart and does not capture `{missing}`: \
                 add `{}.>` to its subjects, or set SMARTMART_NATS_STREAM to another name",
                self.settings.subject_prefix
            );
        }
        Ok(())
    }

    /// Forgets that the stream was checked (it may have been deleted): the
    /// next delivery checks or creates it again.
    async fn recheck_stream(&self) {
        self.state.lock().await.stream_checked = false;
    }
}

/// How `existing` differs from `wanted` in what the sink relies on.
fn differences(existing: &StreamConfig, wanted: &StreamConfig, subjects: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    if existing.subjects != wanted.subjects {
        let covered = subjects.iter().all(|s| existing.subjects.iter().any(|p| subject_matches(p, s)));
        out.push(format!(
            "subjects {:?} instead of {:?}{}",
            existing.subjects,
            wanted.subjects,
            if covered { "" } else { " (the event subjects are not all captured)" }
        ));
    }
    if existing.storage != wanted.storage {
        out.push(format!("storage {:?} instead of {:?}", existing.storage, wanted.storage));
    }
    if existing.duplicate_window != wanted.duplicate_window {
        out.push(format!(
            "duplicate window {}s instead of {}s",
            existing.duplicate_window.as_secs(),
            wanted.duplicate_window.as_secs()
        ));
    }
    out
}

/// Whether the NATS subject `pattern` (with `*` and `>` wildcards) matches `subject`.
fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for p in pattern.split('.') {
        match (p, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(s)) if p == s => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

#[async_trait::async_trait]
impl EventSink for NatsSink {
    fn name(&self) -> &str {
        "nats"
    }

    async fn deliver(&self, kind: EventKind, events: &[SinkEvent]) -> anyhow::Result<Option<SinkPosition>> {
        let jetstream = self.ready().await?;
        let subject = self.settings.subject(kind);
        // Publish the whole batch, then wait for every ack: one round trip
        // of latency per batch, not per event.
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let message = PublishMessage::build().payload(event.envelope.clone().into()).message_id(&event.id);
            let ack = jetstream
                .send_publish(subject.clone(), message)
                .await
                .with_context(|| format!("publishing event {} to {subject}", event.id))?;
            acks.push((&event.id, ack));
        }
        let mut duplicates = 0usize;
        for (id, ack) in acks {
            match ack.await {
                Ok(ack) => duplicates += usize::from(ack.duplicate),
                Err(e) => {
                    if e.kind() == PublishErrorKind::StreamNotFound {
                        self.recheck_stream().await;
                    }
                    return Err(
                        anyhow::Error::from(e).context(format!("JetStream did not store event {id} ({subject})"))
                    );
                }
            }
        }
        if duplicates > 0 {
            tracing::info!(%subject, duplicates, "JetStream dropped events it already had (a repeated delivery)");
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_wildcards_match_as_nats_does() {
        assert!(subject_matches("smartmart.events.>", "smartmart.events.audit"));
        assert!(subject_matches("smartmart.*.audit", "smartmart.events.audit"));
        assert!(subject_matches("smartmart.events.audit", "smartmart.events.audit"));
        assert!(!subject_matches("smartmart.events.>", "smartmart.events"));
        assert!(!subject_matches("smartmart.events.*", "smartmart.events.audit.x"));
        assert!(!subject_matches("smartmart.events", "smartmart.events.audit"));
        assert!(!subject_matches("other.>", "smartmart.events.audit"));
    }

    #[test]
    fn settings_are_checked_and_name_the_key() {
        assert!(NatsSettings::default().validate().is_ok());
        let bad = |s: NatsSettings| s.validate().unwrap_err().to_string();
        assert!(bad(NatsSettings { url: "http://x".into(), ..NatsSettings::default() }).contains("SMARTMART_NATS_URL"));
        assert!(
            bad(NatsSettings { stream: "a.b".into(), ..NatsSettings::default() }).contains("SMARTMART_NATS_STREAM")
        );
        for prefix in ["", "a..b", "a.*", "a.>", "a b", "a."] {
            let text = bad(NatsSettings { subject_prefix: prefix.into(), ..NatsSettings::default() });
            assert!(text.contains("SMARTMART_NATS_SUBJECT_PREFIX"), "{prefix}: {text}");
        }
        assert!(
            bad(NatsSettings { duplicate_window: Duration::ZERO, ..NatsSettings::default() })
                .contains("DUPLICATE_WINDOW")
        );
    }

    #[test]
    fn credentials_in_the_url_never_show() {
        let settings =
            NatsSettings { url: "nats://svc:hunter2-secret@nats.internal:4222".into(), ..NatsSettings::default() };
        assert_eq!(settings.display_url(), "nats://***@nats.internal:4222");
        assert!(!format!("{settings:?}").contains("hunter2"));
        let bad = NatsSettings { url: "http://svc:hunter2-secret@x".into(), ..NatsSettings::default() };
        assert!(!bad.validate().unwrap_err().to_string().contains("hunter2"));
    }

    #[test]
    fn one_subject_per_event_type_under_the_prefix() {
        let settings = NatsSettings { subject_prefix: "shop.ev".into(), ..NatsSettings::default() };
        let subjects: Vec<String> = EventKind::ALL.iter().map(|&k| settings.subject(k)).collect();
        assert_eq!(subjects, ["shop.ev.audit", "shop.ev.analytics", "shop.ev.fraud"]);
        let config = settings.stream_config();
        assert_eq!(config.subjects, ["shop.ev.>"]);
        assert!(differences(&config, &config, &subjects).is_empty());
        let narrow = StreamConfig { subjects: vec!["shop.ev.audit".into()], ..config.clone() };
        assert!(differences(&narrow, &config, &subjects)[0].contains("not all captured"));
    }
}
