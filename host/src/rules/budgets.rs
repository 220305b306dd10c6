//! Per-call resource budgets of a rule module.

use serde::{Deserialize, Serialize};

/// Limits every call of a module runs under. A call that exceeds one is
/// stopped and reported as a failure of that module; the host and every
/// other module carry on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Budgets {
    /// Wall-clock deadline of one call in milliseconds, enforced by epoch
    /// interruption (it also covers time spent in host calls). Default 1000:
    /// a backstop, far above what a rule needs (tens of µs), so that a
    /// descheduled thread on a busy machine never fails a good rule; fuel is
    /// the precise CPU bound.
    pub time_ms: u64,
    /// Fuel (≈ WebAssembly instructions) one call may burn. Default 50 million,
    /// about 1000× what the bundled rules use: a deterministic CPU bound.
    pub fuel: u64,
    /// Linear memory of one instance, in bytes. Default 16 MiB.
    pub memory_bytes: usize,
    /// What a rule may hand the host in one crossing, in bytes the host
    /// allocates to copy it: string bytes plus, for every list, its length ×
    /// the in-host size of an element. It bounds the call's answer (or its
    /// typed error) and each host call it makes (`log.emit`, `config.get`),
    /// and it is enforced while wasmtime lifts the value, *before* the host
    /// copies what is over (wasmtime's hostcall fuel). Default 64 KiB, at
    /// most [`MAX_OUTPUT_BYTES`].
    pub output_bytes: usize,
}

/// Memory no module may exceed whatever its manifest says: the size of a
/// memory slot in the engine's instance pool.
pub const MAX_MEMORY_BYTES: usize = 64 << 20;

/// Output budget no module may exceed whatever its manifest says.
pub const MAX_OUTPUT_BYTES: usize = 16 << 20;

impl Default for Budgets {
    fn default() -> Self {
        Budgets { time_ms: 1000, fuel: 50_000_000, memory_bytes: 16 << 20, output_bytes: 64 << 10 }
    }
}

impl Budgets {
    /// Checks that the budgets are usable, naming the first that is not.
    pub fn validate(&self) -> Result<(), String> {
        if self.time_ms == 0 || self.time_ms > 60_000 {
            return Err(format!("time_ms must be 1..=60000, got {}", self.time_ms));
        }
        if self.fuel == 0 {
            return Err("fuel must be positive".into());
        }
        if self.memory_bytes < (1 << 16) || self.memory_bytes > MAX_MEMORY_BYTES {
            return Err(format!("memory_bytes must be 65536..={MAX_MEMORY_BYTES}, got {}", self.memory_bytes));
        }
        if self.output_bytes == 0 || self.output_bytes > MAX_OUTPUT_BYTES {
            return Err(format!("output_bytes must be 1..={MAX_OUTPUT_BYTES}, got {}", self.output_bytes));
        }
        Ok(())
    }
}
