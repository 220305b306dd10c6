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

/// What the output budget charges for a value a rule hands the host: the
/// very quantity wasmtime subtracts from the call's hostcall fuel while it
/// lifts the value (`LiftContext::consume_fuel`), so that every report of
/// output (`rules run`, `rules replay`, a canary's budget use) shows what
/// the budget counts, not a measure of its own. Wasmtime charges a string
/// its length in guest memory (the UTF-8 bytes: every guest this project
/// builds is UTF-8; a UTF-16 guest is charged 2 bytes a code unit and would
/// read low here) and a list its length × `size_of` of the element's host
/// type, before lifting the elements; records, variants, options, results
/// and scalars cost nothing of their own.
pub(crate) trait OutputCharge {
    fn output_charge(&self) -> usize;
}

impl OutputCharge for String {
    fn output_charge(&self) -> usize {
        self.len()
    }
}

impl<T: OutputCharge> OutputCharge for Vec<T> {
    fn output_charge(&self) -> usize {
        self.len() * std::mem::size_of::<T>() + self.iter().map(OutputCharge::output_charge).sum::<usize>()
    }
}

impl<T: OutputCharge> OutputCharge for Option<T> {
    fn output_charge(&self) -> usize {
        self.as_ref().map_or(0, OutputCharge::output_charge)
    }
}

impl<T: OutputCharge, E: OutputCharge> OutputCharge for Result<T, E> {
    fn output_charge(&self) -> usize {
        match self {
            Ok(value) => value.output_charge(),
            Err(error) => error.output_charge(),
        }
    }
}

/// Scalars are lifted in place: no charge.
macro_rules! free_of_charge {
    ($($scalar:ty),*) => {$(
        impl OutputCharge for $scalar {
            fn output_charge(&self) -> usize {
                0
            }
        }
    )*};
}
free_of_charge!(bool, u8, u32, u64, i64, f64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_is_charged_its_elements_host_size_and_what_they_hold() {
        assert_eq!("abc".to_string().output_charge(), 3);
        let reasons = vec!["ab".to_string(), String::new()];
        assert_eq!(reasons.output_charge(), 2 * std::mem::size_of::<String>() + 2);
        assert_eq!(vec![1u64, 2, 3].output_charge(), 3 * 8);
        let answer: Result<Vec<Vec<String>>, String> = Ok(vec![reasons.clone()]);
        assert_eq!(answer.output_charge(), std::mem::size_of::<Vec<String>>() + reasons.output_charge());
        assert_eq!(Err::<Vec<String>, _>("no".to_string()).output_charge(), 2);
        assert_eq!(None::<String>.output_charge(), 0);
    }
}
