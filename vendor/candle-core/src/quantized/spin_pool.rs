//! tiergate patch: the threads behind the CPU quantized matmul.
//!
//! A generated token runs ~210 small matmuls (tens of microseconds each) with serial work in
//! between. Through rayon, the caller (mistral.rs's engine thread, not a rayon worker) injects
//! each one into the pool and sleeps; the workers fall asleep between matmuls, and by the time a
//! second worker has woken up the first has finished: a profile showed one worker doing 97% of
//! the dot products while the other spun in `sched_yield`. Here the caller takes part in the
//! work and the helpers busy-wait for the next job for a short while (as llama.cpp's threads
//! do), then park, so an idle server burns no CPU.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, LazyLock, Mutex, TryLockError};
use std::time::{Duration, Instant};

/// Spin on the job counter this long after a job before yielding the core between checks.
const HOT_SPIN: Duration = Duration::from_micros(50);
/// Park after this long without a job.
const PARK_AFTER: Duration = Duration::from_millis(2);

struct Job<'a> {
    task: &'a (dyn Fn(usize) + Sync),
    n_tasks: usize,
    next_task: AtomicUsize,
    panicked: AtomicBool,
}

impl Job<'_> {
    fn work(&self) {
        loop {
            let task_idx = self.next_task.fetch_add(1, Ordering::Relaxed);
            if task_idx >= self.n_tasks {
                return;
            }
            (self.task)(task_idx);
        }
    }
}

struct Shared {
    generation: AtomicU64,
    job: AtomicPtr<Job<'static>>,
    helpers_done: AtomicUsize,
    sleepers: AtomicUsize,
    park_lock: Mutex<()>,
    wake: Condvar,
}

pub(crate) struct SpinPool {
    helpers: usize,
    shared: &'static Shared,
    submit: Mutex<()>,
}

thread_local! {
    static IS_HELPER: Cell<bool> = const { Cell::new(false) };
}

/// Sized like rayon's global pool (so `RAYON_NUM_THREADS` still applies): the caller plus
/// `threads - 1` helpers.
pub(crate) static POOL: LazyLock<SpinPool> = LazyLock::new(|| SpinPool::new(rayon::current_num_threads()));

impl SpinPool {
    fn new(threads: usize) -> Self {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            generation: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            helpers_done: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            park_lock: Mutex::new(()),
            wake: Condvar::new(),
        }));
        let helpers = threads.saturating_sub(1);
        for helper_idx in 0..helpers {
            std::thread::Builder::new()
                .name(format!("candle-qmatmul-{helper_idx}"))
                .spawn(move || helper_loop(shared, 0))
                .expect("spawning a quantized-matmul helper thread");
        }
        Self { helpers, shared, submit: Mutex::new(()) }
    }

    /// Runs `task(0..n_tasks)` on the caller and the helpers. Returns `false` without running
    /// anything when the pool is busy with another caller (or called from a helper); the caller
    /// then uses rayon instead.
    pub(crate) fn try_run(&self, n_tasks: usize, task: &(dyn Fn(usize) + Sync)) -> bool {
        if IS_HELPER.with(Cell::get) {
            return false;
        }
        // A panic in an earlier job poisons the lock but leaves the pool usable.
        let _submit = match self.submit.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return false,
        };
        let job = Job { task, n_tasks, next_task: AtomicUsize::new(0), panicked: AtomicBool::new(false) };
        if self.helpers > 0 {
            let shared = self.shared;
            shared.helpers_done.store(0, Ordering::Relaxed);
            // SAFETY: the job outlives every helper's use of it: we wait below until all helpers
            // have reported done with this generation before returning.
            let job_ptr = &job as *const Job<'_> as *mut Job<'static>;
            shared.job.store(job_ptr, Ordering::Relaxed);
            shared.generation.fetch_add(1, Ordering::SeqCst);
            if shared.sleepers.load(Ordering::SeqCst) > 0 {
                let _parked = shared.park_lock.lock().unwrap_or_else(|e| e.into_inner());
                shared.wake.notify_all();
            }
        }
        let caller_result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.work()));
        if self.helpers > 0 {
            let mut checks = 0u32;
            while self.shared.helpers_done.load(Ordering::Acquire) < self.helpers {
                // A helper that is not running yet may need this core.
                checks = checks.wrapping_add(1);
                if checks % 1024 == 0 {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
        }
        if let Err(panic) = caller_result {
            std::panic::resume_unwind(panic);
        }
        assert!(!job.panicked.load(Ordering::Relaxed), "a quantized-matmul helper thread panicked");
        true
    }
}

/// `seen` is the generation at spawn time: a helper that starts after the first job was posted
/// must still take part in it.
fn helper_loop(shared: &'static Shared, mut seen: u64) {
    IS_HELPER.with(|h| h.set(true));
    loop {
        let idle_since = Instant::now();
        let mut checks = 0u32;
        let generation = loop {
            let generation = shared.generation.load(Ordering::SeqCst);
            if generation != seen {
                break generation;
            }
            checks = checks.wrapping_add(1);
            if checks % 64 != 0 {
                std::hint::spin_loop();
                continue;
            }
            let idle = idle_since.elapsed();
            if idle < HOT_SPIN {
                std::hint::spin_loop();
            } else if idle < PARK_AFTER {
                std::thread::yield_now();
            } else {
                let mut parked = shared.park_lock.lock().unwrap_or_else(|e| e.into_inner());
                shared.sleepers.fetch_add(1, Ordering::SeqCst);
                while shared.generation.load(Ordering::SeqCst) == seen {
                    parked = shared.wake.wait(parked).unwrap_or_else(|e| e.into_inner());
                }
                shared.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
        };
        seen = generation;
        // SAFETY: the submitter keeps the job alive until this helper reports done below.
        let job = unsafe { &*shared.job.load(Ordering::Relaxed) };
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.work())).is_err() {
            job.panicked.store(true, Ordering::Relaxed);
        }
        shared.helpers_done.fetch_add(1, Ordering::Release);
    }
}
