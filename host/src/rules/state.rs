//! What one rule call's `Store` holds: an empty WASI context (built only
//! when the guest first touches WASI), the module's read-only configuration,
//! and the meters behind its budgets (memory, and the log budget below).
//!
//! ## The log budget
//!
//! One rule call may write at most [`MAX_LOG_LINES`] lines and
//! [`MAX_LOG_BYTES`] bytes of log text, keys and values of fields included.
//! Text is charged as it will be written (control characters escaped, see
//! [`super::text`]) *before* anything is formatted, and a line is capped on
//! its own: a message at [`MAX_LOG_MESSAGE`] bytes, at most
//! [`MAX_LOG_FIELDS`] fields, a key at [`MAX_FIELD_KEY`] and a value at
//! [`MAX_FIELD_VALUE`] bytes. A line that does not fit in what is left of
//! the call's budget is dropped whole; what is cut or dropped is counted, and
//! the call ends with one warning saying how much (`rule log budget
//! exceeded`). What one `log.emit` may carry across the boundary at all is
//! bounded earlier, by the call's transfer limit (see `module`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::clocks::{HostMonotonicClock, HostWallClock};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{config, log, wit};
use super::text;

/// Read-only key/value configuration of one module, from the manifest.
pub type ModuleConfig = BTreeMap<String, String>;

/// Log lines one call may write; the rest are dropped and counted.
pub const MAX_LOG_LINES: u32 = 64;
/// Bytes of log text (messages, field keys and values, escaped) one call may
/// write; the rest is dropped and counted.
pub const MAX_LOG_BYTES: usize = 16 << 10;
/// Longest message of one line, in bytes once escaped; longer ones are cut.
pub const MAX_LOG_MESSAGE: usize = 1024;
/// Fields of one line; further fields are dropped.
pub const MAX_LOG_FIELDS: usize = 16;
/// Longest field key, in bytes once escaped; longer ones are cut.
pub const MAX_FIELD_KEY: usize = 64;
/// Longest field value, in bytes once escaped; longer ones are cut.
pub const MAX_FIELD_VALUE: usize = 256;
/// What a guest may write to stdout/stderr in one call (a panic message fits).
const STDIO_CAPACITY: usize = 4096;

pub(crate) struct RuleState {
    /// Built on the guest's first WASI call: the bundled rules import no WASI
    /// at all, and building a context (two seeded generators, the pipes) is
    /// a measurable part of a fresh call (BENCHMARKS.md, "Rule runtime").
    wasi: Option<Wasi>,
    config: Arc<ModuleConfig>,
    /// `name@version` of the module, for log lines.
    label: Arc<str>,
    log: LogMeter,
    /// The lines this call logged (within the log budget), for callers that
    /// show them beside the answer (`smartmart rules run`).
    pub(crate) logged: Vec<LogLine>,
    memory_budget: usize,
    pub(crate) peak_memory: usize,
    pub(crate) memory_denied: bool,
    /// What the output budget charged for the call's answer (or typed
    /// error), once it was lifted; `None` when the call produced none.
    pub(crate) answer_charge: Option<usize>,
    /// Keeps the epoch ticking for as long as the call's store lives.
    pub(crate) in_flight: Option<super::epoch::InFlight>,
}

/// The deny-all WASI context of a call, its resource table, and the pipe
/// its stdout and stderr write into.
struct Wasi {
    ctx: WasiCtx,
    table: ResourceTable,
    stderr: MemoryOutputPipe,
}

impl Wasi {
    fn new() -> Self {
        let stderr = MemoryOutputPipe::new(STDIO_CAPACITY);
        // Deny-all WASI: no preopened directories, no environment, no
        // arguments, no network, clocks frozen at zero, fixed-seed random.
        // Rust's std for wasm32-wasip2 links a few WASI interfaces even when
        // a rule uses none; this context makes each of them inert.
        let ctx = WasiCtx::builder()
            .stdout(stderr.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .insecure_random_seed(0)
            .build();
        Wasi { ctx, table: ResourceTable::new(), stderr }
    }
}

/// A clock that always reads zero: rules get the order time as data, and a
/// rule that asks the clock anyway must not become time-dependent.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

impl RuleState {
    pub(crate) fn new(label: Arc<str>, config: Arc<ModuleConfig>, memory_budget: usize) -> Self {
        RuleState {
            wasi: None,
            config,
            label,
            log: LogMeter::default(),
            logged: Vec::new(),
            memory_budget,
            peak_memory: 0,
            memory_denied: false,
            answer_charge: None,
            in_flight: None,
        }
    }

    /// What the guest wrote to stdout/stderr, lossily decoded, trimmed,
    /// escaped and bounded: it is shown in logs.
    pub(crate) fn guest_output(&self) -> String {
        let Some(wasi) = &self.wasi else {
            return String::new();
        };
        text::failure_text(String::from_utf8_lossy(&wasi.stderr.contents()).trim())
    }

    /// Lines and bytes of log the call's budget dropped, if any.
    pub(crate) fn log_dropped(&self) -> Option<(u32, usize)> {
        (self.log.dropped_lines > 0 || self.log.dropped_bytes > 0)
            .then_some((self.log.dropped_lines, self.log.dropped_bytes))
    }
}

/// What one call has logged, and what its budget dropped.
#[derive(Debug, Default)]
struct LogMeter {
    lines: u32,
    bytes: usize,
    dropped_lines: u32,
    dropped_bytes: usize,
}

/// One line as it will be written: message and fields escaped and capped.
#[derive(Debug, PartialEq)]
struct Admitted {
    message: String,
    /// `key=value key=value`, for the log.
    fields: String,
    pairs: Vec<(String, String)>,
}

/// One line a rule logged during a call, as kept on its store (escaped and
/// capped like the log line it also became).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogLine {
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: &'static str,
    pub message: String,
    pub fields: Vec<(String, String)>,
}

impl LogMeter {
    /// Charges a line to the budget; the line to write, or `None` when the
    /// call's budget cannot take it (then it is counted as dropped).
    fn admit(&mut self, message: &str, fields: &[(String, String)]) -> Option<Admitted> {
        // Cost as written, computed without formatting anything.
        let mut cut = 0usize;
        let mut capped = |len: usize, cap: usize| {
            cut += len.saturating_sub(cap);
            len.min(cap)
        };
        let mut cost = capped(text::escaped_len(message), MAX_LOG_MESSAGE);
        for (key, value) in fields.iter().take(MAX_LOG_FIELDS) {
            // `key=value` and the separating space.
            cost +=
                capped(text::escaped_len(key), MAX_FIELD_KEY) + capped(text::escaped_len(value), MAX_FIELD_VALUE) + 2;
        }
        let extra: usize =
            fields.iter().skip(MAX_LOG_FIELDS).map(|(k, v)| text::escaped_len(k) + text::escaped_len(v) + 2).sum();
        cut += extra;
        if self.lines >= MAX_LOG_LINES || self.bytes + cost > MAX_LOG_BYTES {
            self.dropped_lines += 1;
            self.dropped_bytes += cost + cut;
            return None;
        }
        self.lines += 1;
        self.bytes += cost;
        self.dropped_bytes += cut;
        let pairs: Vec<(String, String)> = fields
            .iter()
            .take(MAX_LOG_FIELDS)
            .map(|(k, v)| (text::escape_bytes(k, MAX_FIELD_KEY), text::escape_bytes(v, MAX_FIELD_VALUE)))
            .collect();
        let fields = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
        Some(Admitted { message: text::escape_bytes(message, MAX_LOG_MESSAGE), fields, pairs })
    }
}

impl WasiView for RuleState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let wasi = self.wasi.get_or_insert_with(Wasi::new);
        WasiCtxView { ctx: &mut wasi.ctx, table: &mut wasi.table }
    }
}

impl wasmtime::ResourceLimiter for RuleState {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_budget {
            self.memory_denied = true;
            return Ok(false);
        }
        self.peak_memory = self.peak_memory.max(desired);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        // Tables hold function references; a rule never needs many.
        Ok(desired <= 100_000)
    }
}

impl wit::Host for RuleState {}

impl log::Host for RuleState {
    fn emit(&mut self, level: log::Level, message: String, fields: Vec<(String, String)>) {
        let Some(Admitted { message, fields, pairs }) = self.log.admit(&message, &fields) else {
            return;
        };
        let module = &*self.label;
        match level {
            log::Level::Trace => tracing::trace!(target: "rule", module, %fields, "{message}"),
            log::Level::Debug => tracing::debug!(target: "rule", module, %fields, "{message}"),
            log::Level::Info => tracing::info!(target: "rule", module, %fields, "{message}"),
            log::Level::Warn => tracing::warn!(target: "rule", module, %fields, "{message}"),
            log::Level::Error => tracing::error!(target: "rule", module, %fields, "{message}"),
        }
        // Kept for the caller too: already within the call's log budget.
        self.logged.push(LogLine { level: level_name(level), message, fields: pairs });
    }
}

fn level_name(level: log::Level) -> &'static str {
    match level {
        log::Level::Trace => "trace",
        log::Level::Debug => "debug",
        log::Level::Info => "info",
        log::Level::Warn => "warn",
        log::Level::Error => "error",
    }
}

impl config::Host for RuleState {
    fn get(&mut self, key: String) -> Option<String> {
        self.config.get(&key).cloned()
    }

    fn entries(&mut self) -> Vec<(String, String)> {
        self.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(n: usize, key: &str, value: &str) -> Vec<(String, String)> {
        (0..n).map(|_| (key.to_string(), value.to_string())).collect()
    }

    #[test]
    fn a_line_is_escaped_and_capped_field_by_field() {
        let mut meter = LogMeter::default();
        let line = meter
            .admit("hello\nFAKE line\x1b[31m", &[("k\n".into(), "v\r\n".into()), ("order".into(), "o-1".into())])
            .unwrap();
        assert_eq!(line.message, "hello\\nFAKE line\\u{1b}[31m");
        assert_eq!(line.fields, "k\\n=v\\r\\n order=o-1");
        assert_eq!(meter.log_dropped_for_test(), (0, 0));

        // 16 fields of 512 KiB: each value capped, fields past 16 dropped.
        let big = "x".repeat(512 << 10);
        let line = meter.admit(&big, &fields(20, "key", &big)).unwrap();
        assert!(line.message.len() <= MAX_LOG_MESSAGE);
        assert_eq!(line.fields.matches("key=").count(), MAX_LOG_FIELDS);
        assert!(line.fields.len() <= MAX_LOG_FIELDS * (MAX_FIELD_VALUE + 8), "{}", line.fields.len());
        let (lines, bytes) = meter.log_dropped_for_test();
        assert_eq!(lines, 0);
        assert!(bytes > 20 * (512 << 10), "{bytes}");
    }

    #[test]
    fn a_call_writes_at_most_its_byte_and_line_budget() {
        let mut meter = LogMeter::default();
        let value = "v".repeat(1000);
        let mut written = 0;
        let mut kept = 0;
        for _ in 0..1000 {
            if let Some(line) = meter.admit("m", &fields(16, "k", &value)) {
                written += line.message.len() + line.fields.len();
                kept += 1;
            }
        }
        assert!(written <= MAX_LOG_BYTES, "{written}");
        assert!(kept > 0 && kept < 1000);
        let (dropped_lines, _) = meter.log_dropped_for_test();
        assert_eq!(dropped_lines, 1000 - kept);

        let mut meter = LogMeter::default();
        let kept = (0..1000).filter(|_| meter.admit("tiny", &[]).is_some()).count();
        assert_eq!(kept, MAX_LOG_LINES as usize);
        assert_eq!(meter.log_dropped_for_test(), (1000 - MAX_LOG_LINES, (1000 - MAX_LOG_LINES as usize) * 4));
    }

    impl LogMeter {
        fn log_dropped_for_test(&self) -> (u32, usize) {
            (self.dropped_lines, self.dropped_bytes)
        }
    }

    #[test]
    fn kept_log_lines_are_the_admitted_ones() {
        let mut state = RuleState::new(Arc::from("test@1"), Arc::new(ModuleConfig::new()), 1 << 20);
        for i in 0..(2 * MAX_LOG_LINES) {
            log::Host::emit(&mut state, log::Level::Info, "line\n".into(), vec![("n".into(), i.to_string())]);
        }
        assert_eq!(state.logged.len(), MAX_LOG_LINES as usize, "the line budget bounds what is kept");
        assert_eq!(state.logged[0].level, "info");
        assert_eq!(state.logged[0].message, "line\\n", "escaped as logged");
        assert_eq!(state.logged[1].fields, [("n".to_string(), "1".to_string())]);
    }
}
