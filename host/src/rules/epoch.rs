//! The epoch ticker: advances the engine's epoch every [`EPOCH_TICK`] on
//! an OS thread of its own, so that a runaway guest is interrupted even when
//! every tokio worker is busy — but only while a call is in flight. A
//! service with no order to price does not wake a thousand times a second
//! for nothing: the ticker parks when the last call ends and the next call
//! unparks it ([`EpochTicker::call_started`]).
//!
//! A deadline is a number of ticks from the epoch at which the call set it,
//! so a tick that the parked ticker skipped shortens no call's budget.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::Thread;
use std::time::Duration;

use wasmtime::Engine;

/// One epoch tick; call deadlines are whole ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// How long a parked ticker sleeps before it looks whether its engine is
/// gone (then it ends).
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// The ticker of one engine and the number of its calls in flight.
pub(crate) struct EpochTicker {
    in_flight: AtomicUsize,
    /// Ticks made so far (what the tests watch).
    ticks: AtomicU64,
    thread: Thread,
}

impl EpochTicker {
    /// Starts the ticker of `engine`, parked. Its thread holds only a weak
    /// reference to the engine and ends with it.
    pub(crate) fn start(engine: &Engine) -> std::io::Result<Arc<EpochTicker>> {
        let weak = engine.weak();
        let (sender, receiver) = std::sync::mpsc::channel::<Arc<EpochTicker>>();
        let handle = std::thread::Builder::new().name("wasm-epoch".into()).spawn(move || {
            let Ok(ticker) = receiver.recv() else { return };
            while let Some(engine) = weak.upgrade() {
                // SeqCst pairs with `call_started`: either this load sees
                // the new call, or the call's unpark comes after it and the
                // park below returns at once.
                if ticker.in_flight.load(Ordering::SeqCst) == 0 {
                    drop(engine);
                    std::thread::park_timeout(IDLE_CHECK);
                    continue;
                }
                engine.increment_epoch();
                ticker.ticks.fetch_add(1, Ordering::Relaxed);
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })?;
        let ticker = Arc::new(EpochTicker {
            in_flight: AtomicUsize::new(0),
            ticks: AtomicU64::new(0),
            thread: handle.thread().clone(),
        });
        // The thread waits for its ticker before it looks at the count.
        let _ = sender.send(ticker.clone());
        Ok(ticker)
    }

    /// Marks a call in flight until the returned guard is dropped (with the
    /// call's store): the ticker ticks meanwhile.
    pub(crate) fn call_started(self: &Arc<Self>) -> InFlight {
        if self.in_flight.fetch_add(1, Ordering::SeqCst) == 0 {
            self.thread.unpark();
        }
        InFlight(self.clone())
    }

    /// Calls in flight now.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    #[cfg(test)]
    fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }
}

/// One call in flight (see [`EpochTicker::call_started`]).
pub(crate) struct InFlight(Arc<EpochTicker>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The count follows the guards; the ticker's own thread is named.
    #[test]
    fn a_call_is_in_flight_until_its_guard_is_dropped() {
        let engine = Engine::default();
        let ticker = EpochTicker::start(&engine).unwrap();
        assert_eq!(ticker.in_flight(), 0);
        let (first, second) = (ticker.call_started(), ticker.call_started());
        assert_eq!(ticker.in_flight(), 2);
        drop(first);
        assert_eq!(ticker.in_flight(), 1);
        drop(second);
        assert_eq!(ticker.in_flight(), 0);
        assert_eq!(ticker.thread.name(), Some("wasm-epoch"));
    }

    /// Waits (at most a minute, however loaded the machine) until `done`.
    fn eventually(mut done: impl FnMut() -> bool) -> bool {
        let until = std::time::Instant::now() + Duration::from_secs(60);
        while !done() {
            if std::time::Instant::now() > until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// No tick without a call in flight: none before the first, none once
    /// the last has ended; and ticks as soon as a call starts again.
    #[test]
    fn the_epoch_ticks_only_while_a_call_is_in_flight() {
        let engine = Engine::default();
        let ticker = EpochTicker::start(&engine).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(ticker.ticks(), 0, "ticked before any call");

        let call = ticker.call_started();
        assert!(eventually(|| ticker.ticks() >= 3), "no tick while a call is in flight");
        drop(call);
        // Once parked (a tick begun before the drop may still land), no more.
        let mut last = ticker.ticks();
        assert!(
            eventually(|| {
                std::thread::sleep(Duration::from_millis(20));
                let now = ticker.ticks();
                std::mem::replace(&mut last, now) == now
            }),
            "kept ticking with no call in flight"
        );
        let parked = ticker.ticks();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(ticker.ticks(), parked, "ticked with no call in flight");

        let again = ticker.call_started();
        assert!(eventually(|| ticker.ticks() > parked), "no tick once a call started again");
        drop(again);
    }
}
