//! What one rule call's `Store` holds: an empty WASI context, the module's
//! read-only configuration, and the meters behind its budgets.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::clocks::{HostMonotonicClock, HostWallClock};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{config, log, wit};

/// Read-only key/value configuration of one module, from the manifest.
pub type ModuleConfig = BTreeMap<String, String>;

/// At most this many log lines per call reach tracing; the rest are counted.
const MAX_LOG_LINES: u32 = 64;
/// Longest log message kept, in bytes.
const MAX_LOG_MESSAGE: usize = 1024;
/// Bytes of log lines one call keeps for its caller (`rules run`); the
/// lines past it still reach tracing.
const MAX_KEPT_LOG_BYTES: usize = 64 << 10;
/// What a guest may write to stdout/stderr in one call (a panic message fits).
const STDIO_CAPACITY: usize = 4096;

pub(crate) struct RuleState {
    wasi: WasiCtx,
    table: ResourceTable,
    config: Arc<ModuleConfig>,
    /// `name@version` of the module, for log lines.
    label: Arc<str>,
    log_lines: u32,
    memory_budget: usize,
    pub(crate) peak_memory: usize,
    pub(crate) memory_denied: bool,
    pub(crate) stderr: MemoryOutputPipe,
    /// The lines this call logged (within the log budget), for callers that
    /// show them beside the answer (`smartmart rules run`).
    pub(crate) logged: Vec<LogLine>,
    logged_bytes: usize,
}

/// One line a rule logged during a call, as kept on its store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogLine {
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: &'static str,
    pub message: String,
    pub fields: Vec<(String, String)>,
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
        let stderr = MemoryOutputPipe::new(STDIO_CAPACITY);
        // Deny-all WASI: no preopened directories, no environment, no
        // arguments, no network, clocks frozen at zero, fixed-seed random.
        // Rust's std links a few WASI interfaces even when a rule uses none;
        // this context makes each of them inert.
        let wasi = WasiCtx::builder()
            .stdout(stderr.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .insecure_random_seed(0)
            .build();
        RuleState {
            wasi,
            table: ResourceTable::new(),
            config,
            label,
            log_lines: 0,
            memory_budget,
            peak_memory: 0,
            memory_denied: false,
            stderr,
            logged: Vec::new(),
            logged_bytes: 0,
        }
    }

    /// What the guest wrote to stdout/stderr, lossily decoded and trimmed.
    pub(crate) fn guest_output(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents()).trim().to_string()
    }
}

impl WasiView for RuleState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
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
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES {
            if self.log_lines == MAX_LOG_LINES + 1 {
                tracing::warn!(module = %self.label, "rule log budget exhausted; further lines dropped");
            }
            return;
        }
        let mut message = message;
        message.truncate(message.floor_char_boundary(MAX_LOG_MESSAGE));
        let fields: Vec<(String, String)> = fields.into_iter().take(16).collect();
        let joined = fields.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
        let module = &*self.label;
        match level {
            log::Level::Trace => tracing::trace!(target: "rule", module, fields = %joined, "{message}"),
            log::Level::Debug => tracing::debug!(target: "rule", module, fields = %joined, "{message}"),
            log::Level::Info => tracing::info!(target: "rule", module, fields = %joined, "{message}"),
            log::Level::Warn => tracing::warn!(target: "rule", module, fields = %joined, "{message}"),
            log::Level::Error => tracing::error!(target: "rule", module, fields = %joined, "{message}"),
        }
        // Kept for the caller too, within a byte bound of its own: field
        // values are not truncated, and a guest could otherwise make the
        // host hold many copies of its whole memory.
        let size = message.len() + fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        if self.logged_bytes + size <= MAX_KEPT_LOG_BYTES {
            self.logged_bytes += size;
            self.logged.push(LogLine { level: level_name(level), message, fields });
        }
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

    #[test]
    fn kept_log_lines_are_bounded_in_bytes_and_count() {
        let mut state = RuleState::new(Arc::from("test@1"), Arc::new(ModuleConfig::new()), 1 << 20);
        let emit = |state: &mut RuleState, value: String| {
            log::Host::emit(state, log::Level::Info, "line".into(), vec![("key".into(), value)]);
        };
        let big = "x".repeat(MAX_KEPT_LOG_BYTES / 2);
        for _ in 0..3 {
            emit(&mut state, big.clone());
        }
        assert_eq!(state.logged.len(), 1, "only the first half-budget line fits");
        assert_eq!(state.logged[0].level, "info");
        for i in 0..(2 * MAX_LOG_LINES) {
            emit(&mut state, i.to_string());
        }
        assert_eq!(state.logged.len(), MAX_LOG_LINES as usize - 2, "the line budget counts every line");
        assert!(state.logged_bytes <= MAX_KEPT_LOG_BYTES);
    }
}
