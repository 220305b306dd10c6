//! The threads rule calls run on.
//!
//! A rule call is a few microseconds of CPU, bounded by its fuel and epoch
//! deadline; WASI's synchronous bindings must not run on an async worker
//! (they block on a runtime of their own). So every call runs on one of a
//! few dedicated threads, and each hop carries a whole batch of calls: an
//! order's discount rules, its warehouse selection, a batch of fraud
//! checks. Handing work to one of these threads costs about what one
//! `spawn_blocking` does, so fewer hops is what makes the order path cheap.
//!
//! The number of threads also bounds how many rule instances are alive at
//! once, and with it the host memory rule calls can take (see `budgets`).

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
/// `f` is resumed here, on the caller's task.
pub async fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (answer, result) = oneshot::channel();
    let task: Task = Box::new(move || {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = answer.send(outcome);
    });
    pool().send(task).expect("the rule threads live as long as the process");
    match result.await.expect("a rule thread always answers") {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
