//! Event delivery: the outbox dispatcher and the sinks it delivers to.
//!
//! - [`sink`]: the `EventSink` trait and the default JSON Lines sink;
//! - [`nats`]: the NATS JetStream sink (deduplication by event id), with
//!   its TLS (`nats_tls`), credentials (`nats_auth`) and the explanation of
//!   a failed connection (`nats_connect_error`);
//! - [`kafka`]: the Kafka sink (at least once, keyed by order id;
//!   consumers deduplicate by the `event-id` header);
//! - [`envelope`]: the envelopes of an order's three events, from its
//!   invoice (the saga writes them to the outbox; the dispatcher builds
//!   audit and analytics at delivery);
//! - [`dispatcher`]: reads READY outbox rows, delivers them at least once,
//!   backs off per event when a sink fails; never on an order's path.

pub(crate) mod dispatcher;
pub(crate) mod envelope;
pub(crate) mod kafka;
pub(crate) mod nats;
mod nats_auth;
mod nats_connect_error;
mod nats_tls;
pub(crate) mod sink;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;

pub use dispatcher::{Outbox, deliver_due, run_dispatcher};
// Kafka's client certificate and refusals are named after the broker here:
// NATS has its own `ClientCertificate`.
pub use kafka::{
    ClientCertificate as KafkaClientCertificate, KafkaSasl, KafkaSettings, KafkaSink, KafkaTls,
    Refusal as KafkaRefusal, SaslMechanism,
};
pub use nats::{ClientCertificate, NatsAuth, NatsConnectError, NatsSettings, NatsSink, NatsTls};
pub use sink::{EventSink, JsonlSink, SinkEvent};

use crate::store::outbox::SinkPosition;

/// Which sink the engine delivers events to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SinkChoice {
    /// JSON Lines files in `<data dir>/events/` (the default).
    #[default]
    Jsonl,
    /// A NATS JetStream stream.
    Nats(NatsSettings),
    /// Kafka topics, one per event type.
    Kafka(KafkaSettings),
}

/// Builds the chosen sink, ready for the dispatcher: the JSON Lines files
/// resumed from the positions the store recorded (cutting what a crash left
/// unrecorded); the NATS and Kafka sinks connecting in the background, so a
/// broker that is down never holds up the start.
/// `replica` names this process among others on a shared database (the
/// files' positions are kept per replica); `None` when it is the only one.
pub async fn open_sink(
    choice: &SinkChoice,
    events_dir: &Path,
    recorded: &[SinkPosition],
    replica: Option<&str>,
) -> anyhow::Result<Arc<dyn EventSink>> {
    match choice {
        SinkChoice::Jsonl => {
            let sink = JsonlSink::scoped(events_dir, replica.unwrap_or(""))
                .with_context(|| format!("creating the event directory {}", events_dir.display()))?;
            sink.resume(recorded).await.context("resuming the event sink")?;
            Ok(Arc::new(sink))
        }
        SinkChoice::Nats(settings) => {
            let sink = Arc::new(NatsSink::new(settings.clone())?);
            let starting = sink.clone();
            tokio::spawn(async move {
                if let Err(e) = starting.connect_now().await {
                    tracing::warn!(
                        url = %starting.settings().display_url(),
                        error = format!("{e:#}"),
                        "could not connect to NATS at start; orders are served, their events wait in the outbox and go out once it accepts the connection"
                    );
                }
            });
            Ok(sink)
        }
        SinkChoice::Kafka(settings) => {
            let sink = Arc::new(KafkaSink::new(settings.clone())?);
            let starting = sink.clone();
            tokio::spawn(async move {
                if let Err(e) = starting.connect_now().await {
                    tracing::warn!(
                        brokers = %starting.settings().display_brokers(),
                        error = format!("{e:#}"),
                        "Kafka is not reachable at start; orders are served, their events wait in the outbox and go out once it answers"
                    );
                }
            });
            Ok(sink)
        }
    }
}
