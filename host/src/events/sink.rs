//! Where events go. A sink receives a batch of envelopes of one type and
//! either takes all of them or fails; the dispatcher retries a failed batch.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// A destination of events.
#[async_trait::async_trait]
pub trait EventSink: Send + Sync + 'static {
    /// A name for logs and metrics.
    fn name(&self) -> &str;
    /// Delivers `envelopes` (JSON text, one event each) of type `kind`.
    async fn deliver(&self, kind: &str, envelopes: &[String]) -> anyhow::Result<()>;
}

/// The embedded default: appends each event as one line of JSON to
/// `<dir>/<type>.jsonl`, flushed to disk before the batch counts as
/// delivered. A crash after the write and before the outbox is updated
/// repeats the batch: consumers de-duplicate by event `id`.
#[derive(Debug, Clone)]
pub struct JsonlSink {
    dir: PathBuf,
}

impl JsonlSink {
    pub fn new(dir: &Path) -> std::io::Result<JsonlSink> {
        std::fs::create_dir_all(dir)?;
        Ok(JsonlSink { dir: dir.to_owned() })
    }

    /// The file events of type `kind` go to.
    pub fn file(&self, kind: &str) -> PathBuf {
        self.dir.join(format!("{kind}.jsonl"))
    }
}

#[async_trait::async_trait]
impl EventSink for JsonlSink {
    fn name(&self) -> &str {
        "jsonl"
    }

    async fn deliver(&self, kind: &str, envelopes: &[String]) -> anyhow::Result<()> {
        if !matches!(kind, "audit" | "analytics" | "fraud") {
            anyhow::bail!("unknown event type {kind}");
        }
        let path = self.file(kind);
        let mut text = String::with_capacity(envelopes.iter().map(|e| e.len() + 1).sum());
        for envelope in envelopes {
            text.push_str(envelope);
            text.push('\n');
        }
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
            file.write_all(text.as_bytes())?;
            file.sync_data()?;
            Ok(())
        })
        .await??;
        Ok(())
    }
}
