//! `ThreadPool`: the persistent worker threads that run the CPU backend's parallel steps.
//!
//! A decode step of a 30-layer model runs about 150 parallel steps, each a few tens of microseconds long, so
//! what a step costs to start and to finish matters as much as the work itself. Workers are started once; the
//! caller publishes a job by bumping an epoch counter, runs its own share, and spins until every worker has
//! reported done. Idle workers spin briefly (the next step is usually microseconds away), then yield their core
//! (so that a machine with more runnable threads than cores still makes progress), and then park on a condition
//! variable, so an idle node does not burn its cores.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker waits (spinning, then yielding its core) before it parks.
const SPIN_BEFORE_PARK: Duration = Duration::from_millis(2);
/// Busy-wait iterations before a waiting thread starts yielding its core to others (a few microseconds).
const SPINS_BEFORE_YIELD: u32 = 2_000;

/// A job as the workers see it: `(thread index, thread count)`.
type Job<'a> = dyn Fn(usize, usize) + Sync + 'a;

struct Shared {
    /// Bumped once per job; a worker runs a job when it sees a value it has not run yet.
    epoch: AtomicU64,
    /// The current job, valid while `pending > 0` for the epoch it was published with.
    job: Mutex<Option<JobPtr>>,
    /// Workers that have not yet finished the current job.
    pending: AtomicUsize,
    /// Workers parked (or about to park) on `wake`.
    sleepers: AtomicUsize,
    park: Mutex<()>,
    wake: Condvar,
    /// Set when a worker's share of a job panicked; the caller re-raises it.
    panicked: AtomicBool,
    shutdown: AtomicBool,
}

/// A job pointer with its lifetime erased. [`ThreadPool::run`] does not return until every worker is done with it.
#[derive(Clone, Copy)]
struct JobPtr(*const Job<'static>);
// SAFETY: the pointee is `Sync` and outlives every use (see `run`).
unsafe impl Send for JobPtr {}

pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serialises callers: one job at a time.
    caller: Mutex<()>,
}

impl ThreadPool {
    /// A pool of `threads` threads in all: the caller of [`ThreadPool::run`] and `threads - 1` workers.
    pub fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: Mutex::new(None),
            pending: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            park: Mutex::new(()),
            wake: Condvar::new(),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
        });
        let threads = threads.max(1);
        let workers = (1..threads)
            .map(|index| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("exo-cpu-{index}"))
                    .spawn(move || worker(&shared, index, threads))
                    .expect("spawning a CPU worker thread")
            })
            .collect();
        Self { shared, workers, caller: Mutex::new(()) }
    }

    /// Threads that share each job, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `job(index, threads)` once on every thread of the pool (index 0 on the calling thread) and returns
    /// when all have finished.
    pub fn run(&self, job: &(dyn Fn(usize, usize) + Sync)) {
        let threads = self.threads();
        if threads == 1 {
            job(0, 1);
            return;
        }
        let _caller = lock(&self.caller);
        let shared = &*self.shared;
        // SAFETY: the pointer is only dereferenced by workers between the epoch bump below and their decrement of
        // `pending`, and this function waits for `pending` to reach zero before `job` can go out of scope.
        let erased: *const Job<'static> = unsafe { std::mem::transmute(job as *const Job<'_>) };
        *lock(&shared.job) = Some(JobPtr(erased));
        shared.pending.store(threads - 1, Ordering::SeqCst);
        shared.epoch.fetch_add(1, Ordering::SeqCst);
        if shared.sleepers.load(Ordering::SeqCst) > 0 {
            let _park = lock(&shared.park);
            shared.wake.notify_all();
        }

        let mine = panic::catch_unwind(AssertUnwindSafe(|| job(0, threads)));
        let mut spins = 0u32;
        while shared.pending.load(Ordering::Acquire) > 0 {
            // A worker that is not running (more runnable threads than cores) needs this core: stop spinning.
            spins = spins.saturating_add(1);
            if spins < SPINS_BEFORE_YIELD {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        *lock(&shared.job) = None;
        if let Err(payload) = mine {
            panic::resume_unwind(payload);
        }
        if shared.panicked.swap(false, Ordering::SeqCst) {
            panic!("a CPU worker thread panicked");
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        {
            let _park = lock(&self.shared.park);
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves no broken state behind.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn worker(shared: &Shared, index: usize, threads: usize) {
    let mut seen = 0u64;
    loop {
        // Wait for a new epoch: spin first, then park.
        let started = Instant::now();
        let mut spins = 0u32;
        let epoch = loop {
            let e = shared.epoch.load(Ordering::Acquire);
            if e != seen {
                break e;
            }
            spins = spins.saturating_add(1);
            if spins < SPINS_BEFORE_YIELD {
                std::hint::spin_loop();
                continue;
            }
            if started.elapsed() < SPIN_BEFORE_PARK {
                std::thread::yield_now();
                continue;
            }
            let guard = lock(&shared.park);
            shared.sleepers.fetch_add(1, Ordering::SeqCst);
            let mut guard = guard;
            while shared.epoch.load(Ordering::SeqCst) == seen {
                guard = shared.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            shared.sleepers.fetch_sub(1, Ordering::SeqCst);
            drop(guard);
        };
        seen = epoch;
        if shared.shutdown.load(Ordering::SeqCst) {
            return;
        }
        let job = *lock(&shared.job);
        if let Some(JobPtr(ptr)) = job {
            // SAFETY: see `ThreadPool::run`.
            let job = unsafe { &*ptr };
            if panic::catch_unwind(AssertUnwindSafe(|| job(index, threads))).is_err() {
                shared.panicked.store(true, Ordering::SeqCst);
            }
        }
        shared.pending.fetch_sub(1, Ordering::Release);
    }
}

/// The share of `0..n` that thread `index` of `threads` takes, in whole multiples of `align` (the last share
/// takes the remainder).
pub fn share(n: usize, align: usize, index: usize, threads: usize) -> std::ops::Range<usize> {
    let units = n.div_ceil(align);
    let start = (units * index / threads * align).min(n);
    let end = (units * (index + 1) / threads * align).min(n);
    start..end
}

static THREADS: AtomicUsize = AtomicUsize::new(0);
static POOL: OnceLock<ThreadPool> = OnceLock::new();

/// Sets the number of threads of the process-wide pool; it has no effect once the pool has started.
pub fn set_threads(threads: usize) {
    THREADS.store(threads.max(1), Ordering::SeqCst);
}

/// The process-wide pool, started on first use with [`set_threads`]'s count or one thread per available core.
pub fn global() -> &'static ThreadPool {
    POOL.get_or_init(|| {
        let n = match THREADS.load(Ordering::SeqCst) {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        ThreadPool::new(n)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_runs_its_share_once_per_job() {
        let pool = ThreadPool::new(3);
        let counts: Vec<AtomicUsize> = (0..1000).map(|_| AtomicUsize::new(0)).collect();
        for _ in 0..200 {
            pool.run(&|i, n| {
                assert_eq!(n, 3);
                for c in &counts[share(counts.len(), 8, i, n)] {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 200));
    }

    #[test]
    fn parked_workers_wake_up() {
        let pool = ThreadPool::new(2);
        let ran = AtomicUsize::new(0);
        pool.run(&|_, _| {
            ran.fetch_add(1, Ordering::SeqCst);
        });
        // Long enough for the worker to park.
        std::thread::sleep(SPIN_BEFORE_PARK * 5);
        pool.run(&|_, _| {
            ran.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(ran.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn a_panicking_worker_is_reported_and_the_pool_survives() {
        let pool = ThreadPool::new(2);
        let r = panic::catch_unwind(AssertUnwindSafe(|| {
            pool.run(&|i, _| {
                if i == 1 {
                    panic!("worker share failed");
                }
            })
        }));
        assert!(r.is_err());
        let ran = AtomicUsize::new(0);
        pool.run(&|_, _| {
            ran.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(ran.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn shares_cover_the_range_without_overlap() {
        for n in [0, 1, 7, 64, 100, 1000] {
            for threads in 1..5 {
                let mut next = 0;
                for i in 0..threads {
                    let r = share(n, 4, i, threads);
                    assert_eq!(r.start, next);
                    assert!(r.start.is_multiple_of(4) || r.start == n);
                    next = r.end;
                }
                assert_eq!(next, n);
            }
        }
    }
}
