//! The threads synchronous rule calls run on.
//!
//! A rule call is a few microseconds of CPU, bounded by its fuel and epoch
//! deadline; WASI's synchronous bindings must not run on an async worker
//! (they block on a runtime of their own). So the synchronous calls made
//! from async code run on one of a few dedicated threads, and each hop
//! carries a whole batch of calls: a batch of fraud checks, an order's
//! shadow runs. Handing work to one of these threads costs about what one
//! `spawn_blocking` does. The order's own rule calls make no hop at all:
//! they are async calls on its task (see `module`).

use std::sync::OnceLock;

use tokio::sync::oneshot;

type Task = Box<dyn FnOnce() + Send>;

/// Threads rule calls run on; `SMARTMART_RULE_THREADS` overrides the
/// default of one per core (at least 2).
pub fn threads() -> usize {
    std::env::var("SMARTMART_RULE_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| (1..=256).contains(n))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()).max(2))
}

fn pool() -> &'static crossbeam_channel::Sender<Task> {
    static POOL: OnceLock<crossbeam_channel::Sender<Task>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tasks, queue) = crossbeam_channel::unbounded::<Task>();
        for index in 0..threads() {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("rule-{index}"))
                .spawn(move || {
                    super::module::mark_rule_thread();
                    for task in queue {
                        task();
                    }
                })
                .expect("spawning a rule thread at start-up");
        }
        tasks
    })
}

/// Runs `f` (rule calls) on a rule thread and returns its result. A panic in
/// `f` is resumed here, on the caller's task. `f` runs in the caller's
/// tracing span, so that what the rules log names the order (and the
/// request) they ran for, and the spans of its rule calls (`Rule`'s
/// `rule` span) are children of the caller's (an exported stage span).
pub async fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (answer, result) = oneshot::channel();
    let span = tracing::Span::current();
    let task: Task = Box::new(move || {
        let _entered = span.enter();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = answer.send(outcome);
    });
    pool().send(task).expect("the rule threads live as long as the process");
    match result.await.expect("a rule thread always answers") {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

#[cfg(test)]
mod tests {
    use tracing::Instrument as _;

    use super::*;

    #[tokio::test]
    async fn rule_calls_run_in_the_callers_span() {
        // A registry of the test's own (no global subscriber): it keeps the
        // current span per thread, so the rule thread's can be read from it.
        let dispatch = tracing::Dispatch::new(tracing_subscriber::registry());
        let _default = tracing::dispatcher::set_default(&dispatch);
        let span = tracing::error_span!("order", order_id = "ord_1");
        let seen = dispatch.clone();
        let on_rule_thread =
            run(move || (std::thread::current().name().map(str::to_owned), seen.current_span().id().cloned()))
                .instrument(span.clone())
                .await;
        assert!(on_rule_thread.0.as_deref().is_some_and(|name| name.starts_with("rule-")), "{on_rule_thread:?}");
        assert_eq!(on_rule_thread.1, span.id(), "the rule thread is in the caller's span");
        // Outside a span, none.
        let seen = dispatch.clone();
        assert_eq!(run(move || seen.current_span().id().cloned()).await, None);
    }
}
