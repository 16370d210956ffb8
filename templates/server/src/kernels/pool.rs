//! A persistent compute pool: `plan::THREADS - 1` workers spawned once, plus
//! the calling thread, run one job at a time.
//!
//! A decode step dispatches a few hundred small jobs (each matrix product, the
//! attention), so dispatch must cost well under a microsecond: workers spin on
//! a generation counter for [`POOL_SPIN`](crate::plan::POOL_SPIN) rounds after
//! each job before parking, and the caller wakes parked ones with `unpark`
//! (an atomic swap when the worker is still spinning). The caller, waiting
//! for workers, spins as long and then yields its core, so an oversubscribed
//! machine degrades instead of stalling. This is llama.cpp's barrier design.

use crate::plan::POOL_SPIN;
use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

/// A job: called once on every thread with that thread's index.
type Job<'a> = dyn Fn(usize) + Sync + 'a;

/// State shared by the caller and the workers.
struct Shared {
    /// The current job, valid while a `run` is in progress.
    job: Mutex<Option<&'static Job<'static>>>,
    /// Bumped once per job; workers run the job when it changes.
    generation: AtomicUsize,
    /// Workers that finished the current job.
    done: AtomicUsize,
    /// The first panic payload a worker caught in the current job.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// Set when the pool is dropped.
    shutdown: AtomicBool,
}

/// The persistent thread pool.
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Starts a pool of `threads` threads in all (the caller counts as one).
    pub fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared {
            job: Mutex::new(None),
            generation: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panic: Mutex::new(None),
            shutdown: AtomicBool::new(false),
        });
        let workers = (1..threads.max(1))
            .map(|id| {
                let shared = Arc::clone(&shared);
                thread::Builder::new()
                    .name(format!("compute-{id}"))
                    .spawn(move || worker(&shared, id))
                    .expect("spawning a compute thread at start-up (out of resources)")
            })
            .collect();
        Self { shared, workers }
    }

    /// Threads that run each job (workers plus the caller).
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `job(thread_index)` on every thread and returns when all are done.
    /// A panic in any thread is re-raised here after all threads finished.
    pub fn run(&self, job: &Job<'_>) {
        if self.workers.is_empty() {
            job(0);
            return;
        }
        // SAFETY: the reference is erased to 'static only while this call
        // runs: it is cleared below after every worker reported done, so no
        // worker can use it after `job` goes out of scope.
        let erased: &'static Job<'static> = unsafe { std::mem::transmute(job) };
        *lock(&self.shared.job) = Some(erased);
        self.shared.done.store(0, Ordering::Relaxed);
        self.shared.generation.fetch_add(1, Ordering::Release);
        for w in &self.workers {
            w.thread().unpark();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| job(0)));
        let mut spins = 0;
        while self.shared.done.load(Ordering::Acquire) < self.workers.len() {
            // Spin while workers are likely running; past that, a worker has
            // probably lost its core (an oversubscribed machine): yield it ours.
            if spins < POOL_SPIN {
                spins += 1;
                std::hint::spin_loop();
            } else {
                thread::yield_now();
            }
        }
        *lock(&self.shared.job) = None;
        if let Err(payload) = mine {
            resume_unwind(payload);
        }
        if let Some(payload) = lock(&self.shared.panic).take() {
            resume_unwind(payload);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.generation.fetch_add(1, Ordering::Release);
        for w in self.workers.drain(..) {
            w.thread().unpark();
            // A worker never panics outside `catch_unwind`; nothing to report.
            let _ = w.join();
        }
    }
}

/// Locks a mutex, ignoring poisoning (the guarded values stay consistent).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A worker's loop: wait for a new generation, run the job, report done.
fn worker(shared: &Shared, id: usize) {
    let mut seen = 0;
    loop {
        let mut spins = 0;
        loop {
            let g = shared.generation.load(Ordering::Acquire);
            if g != seen {
                seen = g;
                break;
            }
            if spins < POOL_SPIN {
                spins += 1;
                std::hint::spin_loop();
            } else {
                thread::park();
            }
        }
        if shared.shutdown.load(Ordering::Acquire) {
            return;
        }
        let job = *lock(&shared.job);
        if let Some(job) = job
            && let Err(payload) = catch_unwind(AssertUnwindSafe(|| job(id)))
        {
            lock(&shared.panic).get_or_insert(payload);
        }
        shared.done.fetch_add(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_runs_each_job_once() {
        let pool = Pool::new(3);
        let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        for _ in 0..1000 {
            pool.run(&|t| {
                hits[t].fetch_add(1, Ordering::Relaxed);
            });
        }
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1000));
    }

    #[test]
    fn a_worker_panic_reaches_the_caller_and_the_pool_survives() {
        let pool = Pool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| pool.run(&|t| assert_ne!(t, 1, "boom"))));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        pool.run(&|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 2);
    }
}
