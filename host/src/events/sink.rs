//! Where events go. A sink receives a batch of events of one type and
//! either takes all of them or fails; the dispatcher retries a failed batch.
//!
//! Three kinds of sink fit the trait. A sink that keeps a position (the JSON
//! Lines files) returns where its stream ends, the dispatcher records it in
//! the same transaction as the outbox marks, and `resume` cuts what a crash
//! left past it: exactly once by position. A sink that deduplicates by event
//! id (NATS JetStream, `Nats-Msg-Id`) returns no position: a batch delivered
//! again after a crash is dropped by the broker. A sink that can do neither
//! (Kafka) returns no position either and is at least once: a batch
//! delivered again is stored again, and its consumers deduplicate by the
//! event id it carries (the `event-id` header).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::domain::status::EventKind;
use crate::store::outbox::SinkPosition;

/// One event handed to a sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkEvent {
    /// The event's id: unique, and the same on every delivery attempt
    /// (the key a deduplicating sink drops repeats by).
    pub id: String,
    /// The envelope as JSON text, on one line.
    pub envelope: String,
}

/// A destination of events.
#[async_trait::async_trait]
pub trait EventSink: Send + Sync + 'static {
    /// A name for logs and metrics.
    fn name(&self) -> &str;

    /// Called once at start, before any delivery, with the positions the
    /// store recorded for this sink's streams.
    async fn resume(&self, _recorded: &[SinkPosition]) -> anyhow::Result<()> {
        Ok(())
    }

    /// Delivers `events` of type `kind`: `Ok` only once the destination
    /// holds every one of them durably. A sink that keeps a position returns
    /// where its stream now ends; the dispatcher records it with the
    /// delivery marks.
    async fn deliver(&self, kind: EventKind, events: &[SinkEvent]) -> anyhow::Result<Option<SinkPosition>>;

    /// The position returned by `deliver` is now recorded in the store.
    fn recorded(&self, _position: &SinkPosition) {}
}

/// The embedded default: appends each event as one line of JSON to
/// `<dir>/<type>.jsonl`, flushed to disk before the batch counts as
/// delivered, each event exactly once.
///
/// How "exactly once" holds across crashes: the byte offset where a file's
/// recorded deliveries end is stored in the same transaction as the outbox
/// marks. Anything past it in the file was written by a delivery whose
/// marks never committed (a crash between the write and the commit, or a
/// failed commit), so it is cut off, at start and before every write,
/// and those events are written again. A torn last line is such a tail.
/// What is cut is kept in `<type>.jsonl.cut` for the operators.
#[derive(Debug, Clone)]
pub struct JsonlSink {
    dir: PathBuf,
    /// Prefix of the positions' stream names: empty for the only process on
    /// its database; a replica's own id on a shared one, so that the
    /// positions of each replica's files are kept apart.
    scope: String,
    /// Where each file's recorded deliveries end; unknown until the first
    /// delivery or `resume`.
    committed: Arc<Mutex<HashMap<EventKind, u64>>>,
}

impl JsonlSink {
    pub fn new(dir: &Path) -> std::io::Result<JsonlSink> {
        JsonlSink::scoped(dir, "")
    }

    /// A sink whose positions are named after `scope` (a replica's id).
    pub fn scoped(dir: &Path, scope: &str) -> std::io::Result<JsonlSink> {
        std::fs::create_dir_all(dir)?;
        Ok(JsonlSink { dir: dir.to_owned(), scope: scope.to_string(), committed: Arc::default() })
    }

    /// The file events of type `kind` go to.
    pub fn file(&self, kind: EventKind) -> PathBuf {
        self.dir.join(format!("{kind}.jsonl"))
    }

    fn stream(&self, kind: EventKind) -> String {
        if self.scope.is_empty() { format!("jsonl:{kind}") } else { format!("jsonl:{}:{kind}", self.scope) }
    }

    fn committed(&self, kind: EventKind) -> Option<u64> {
        self.committed.lock().unwrap_or_else(|p| p.into_inner()).get(&kind).copied()
    }
}

/// Opens `path` for writing, cuts everything past `keep` (or, with no
/// recorded position, a torn last line) and returns the file and its length.
fn open_cut(path: &Path, keep: Option<u64>) -> anyhow::Result<(File, u64)> {
    let mut file = OpenOptions::new().create(true).read(true).write(true).truncate(false).open(path)?;
    let len = file.metadata()?.len();
    let keep = match keep {
        Some(keep) if keep > len => {
            // Shorter than recorded: rotated or truncated by someone else.
            tracing::warn!(file = %path.display(), len, recorded = keep, "event file is shorter than recorded; appending at its end");
            len
        }
        Some(keep) => keep,
        None => end_of_last_line(&mut file, len)?,
    };
    if keep < len {
        let mut tail = Vec::new();
        file.seek(SeekFrom::Start(keep))?;
        file.read_to_end(&mut tail)?;
        let mut cut_file = path.as_os_str().to_owned();
        cut_file.push(".cut");
        let mut cut = OpenOptions::new().create(true).append(true).open(&cut_file)?;
        cut.write_all(&tail)?;
        cut.write_all(b"\n")?;
        cut.sync_data()?;
        file.set_len(keep)?;
        file.sync_data()?;
        tracing::warn!(file = %path.display(), bytes = len - keep, kept_in = %Path::new(&cut_file).display(),
            "cut an event file's unrecorded tail (written before a crash); its events are written again");
    }
    Ok((file, keep))
}

/// The length up to the last newline (a file that does not end in one has a torn last line).
fn end_of_last_line(file: &mut File, len: u64) -> std::io::Result<u64> {
    const CHUNK: u64 = 64 * 1024;
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let mut buf = vec![0; (end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf)?;
        if let Some(i) = buf.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

#[async_trait::async_trait]
impl EventSink for JsonlSink {
    fn name(&self) -> &str {
        "jsonl"
    }

    async fn resume(&self, recorded: &[SinkPosition]) -> anyhow::Result<()> {
        for &kind in EventKind::ALL {
            // No recorded position means no delivery to this file was ever
            // recorded: whatever it holds was written by a delivery whose
            // marks never committed (a crash during the very first one), so
            // all of it is cut (kept aside) and its events are written again.
            // Keeping its whole lines would send them twice.
            let keep = recorded.iter().find(|p| p.stream == self.stream(kind)).map_or(0, |p| p.offset);
            let path = self.file(kind);
            let (_, end) = tokio::task::spawn_blocking(move || open_cut(&path, Some(keep))).await??;
            self.committed.lock().unwrap_or_else(|p| p.into_inner()).insert(kind, end);
        }
        Ok(())
    }

    async fn deliver(&self, kind: EventKind, events: &[SinkEvent]) -> anyhow::Result<Option<SinkPosition>> {
        let path = self.file(kind);
        // The whole batch as one buffer, written by one call: every event a
        // whole line.
        let mut text = String::with_capacity(events.iter().map(|e| e.envelope.len() + 1).sum());
        for SinkEvent { envelope, .. } in events {
            anyhow::ensure!(!envelope.contains('\n'), "an event envelope spans several lines");
            text.push_str(envelope);
            text.push('\n');
        }
        let keep = self.committed(kind);
        let end = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
            let (mut file, start) = open_cut(&path, keep)?;
            file.seek(SeekFrom::Start(start))?;
            file.write_all(text.as_bytes())?;
            file.sync_data()?;
            Ok(start + text.len() as u64)
        })
        .await??;
        Ok(Some(SinkPosition { stream: self.stream(kind), offset: end }))
    }

    fn recorded(&self, position: &SinkPosition) {
        if let Some(&kind) = EventKind::ALL.iter().find(|&&k| self.stream(k) == position.stream) {
            self.committed.lock().unwrap_or_else(|p| p.into_inner()).insert(kind, position.offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(envelope: &str) -> SinkEvent {
        SinkEvent { id: envelope.to_string(), envelope: envelope.to_string() }
    }

    #[tokio::test]
    async fn an_unrecorded_tail_and_a_torn_line_are_cut_and_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let sink = JsonlSink::new(dir.path()).unwrap();
        sink.resume(&[]).await.unwrap();
        let first = sink.deliver(EventKind::Audit, &[event(r#"{"id":"a"}"#)]).await.unwrap().unwrap();
        sink.recorded(&first);
        // Written, never recorded (a crash before the commit), then a torn line.
        sink.deliver(EventKind::Audit, &[event(r#"{"id":"b"}"#)]).await.unwrap();
        let path = sink.file(EventKind::Audit);
        OpenOptions::new().append(true).open(&path).unwrap().write_all(br#"{"id":"c","pay"#).unwrap();

        let restarted = JsonlSink::new(dir.path()).unwrap();
        restarted.resume(std::slice::from_ref(&first)).await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"id\":\"a\"}\n");
        let cut = std::fs::read_to_string(dir.path().join("audit.jsonl.cut")).unwrap();
        assert!(cut.contains(r#"{"id":"b"}"#) && cut.contains(r#"{"id":"c","pay"#), "{cut}");
        // Written again after the restart: each id once.
        restarted.deliver(EventKind::Audit, &[event(r#"{"id":"b"}"#)]).await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"id\":\"a\"}\n{\"id\":\"b\"}\n");
    }

    #[tokio::test]
    async fn a_first_delivery_never_recorded_is_cut_whole_and_written_again_once() {
        // A crash between the first write to a file and the commit of its
        // marks: the store holds no position for the file at all.
        let dir = tempfile::tempdir().unwrap();
        let sink = JsonlSink::new(dir.path()).unwrap();
        sink.resume(&[]).await.unwrap();
        sink.deliver(EventKind::Analytics, &[event(r#"{"id":"x"}"#), event(r#"{"id":"y"}"#)]).await.unwrap();
        let path = sink.file(EventKind::Analytics);

        let restarted = JsonlSink::new(dir.path()).unwrap();
        restarted.resume(&[]).await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        let cut = std::fs::read_to_string(dir.path().join("analytics.jsonl.cut")).unwrap();
        assert!(cut.contains(r#"{"id":"x"}"#) && cut.contains(r#"{"id":"y"}"#), "{cut}");
        restarted.deliver(EventKind::Analytics, &[event(r#"{"id":"x"}"#), event(r#"{"id":"y"}"#)]).await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"id\":\"x\"}\n{\"id\":\"y\"}\n");
    }
}
