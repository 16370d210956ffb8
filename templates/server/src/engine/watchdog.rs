//! The step watchdog: a hung (not panicked) engine step must not hang its clients.
//!
//! The engine thread stamps the start of each forward; a watchdog thread looks at the
//! stamp [`CHECKS_PER_DEADLINE`] times per deadline. When a forward has run past the
//! deadline (`plan::STEP_DEADLINE_MS`, or `serve --step-deadline-ms`), it marks the
//! engine hung, so `/health` and new requests get 503 with `Retry-After`, and ends every
//! live request with [`Event::Unavailable`] (a 503, or an error event then `[DONE]` on a
//! stream). A thread cannot be stopped from outside, so the server stays up only to say
//! so; an orchestrator restarts it on the failing health check.
//!
//! Fault injection for tests: [`FAULT_ENV`] = `hang:N` makes the `N`-th forward (from 1)
//! sleep instead of returning, as a deadlocked kernel would. It is read once, at start.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{UnboundedSender, WeakUnboundedSender};

use super::{Event, HUNG, RUNNING, SHUTTING_DOWN, STOPPED, Shared};

/// The environment variable that injects a hung step (`hang:N`).
pub const FAULT_ENV: &str = "VIBESERVE_STEP_FAULT";
/// Checks per deadline: a hang is noticed at most a tenth of the deadline late.
const CHECKS_PER_DEADLINE: u32 = 10;
/// Why requests fail once the engine is hung.
pub const HUNG_MESSAGE: &str = "an engine step exceeded its deadline; the server must restart";

/// When the current forward started, and who may still be waiting on the engine.
#[derive(Debug)]
pub(super) struct Watch {
    epoch: Instant,
    /// Milliseconds from `epoch` to the current forward's start, plus one; 0 between
    /// forwards.
    step_started: AtomicU64,
    /// Every request's event channel, weakly: a finished request's sender is dropped by
    /// the engine, so only live ones upgrade.
    live: Mutex<Vec<WeakUnboundedSender<Event>>>,
}

impl Watch {
    pub(super) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            step_started: AtomicU64::new(0),
            live: Mutex::new(Vec::new()),
        }
    }

    /// Remembers a new request's channel (and forgets the ended ones).
    pub(super) fn register(&self, events: &UnboundedSender<Event>) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|w| w.strong_count() > 0);
        live.push(events.downgrade());
    }

    /// A forward begins.
    pub(super) fn step_begins(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.step_started
            .store(ms.saturating_add(1), Ordering::Release);
    }

    /// The forward ended.
    pub(super) fn step_ends(&self) {
        self.step_started.store(0, Ordering::Release);
    }

    /// Whether the current forward has run longer than `deadline`.
    fn overdue(&self, deadline: Duration) -> bool {
        match self.step_started.load(Ordering::Acquire) {
            0 => false,
            started => {
                let started = self.epoch + Duration::from_millis(started - 1);
                started.elapsed() > deadline
            }
        }
    }

    /// Ends every live request with a 503.
    fn fail_live(&self) {
        let live = std::mem::take(&mut *self.live.lock().unwrap_or_else(|e| e.into_inner()));
        for events in live.iter().filter_map(WeakUnboundedSender::upgrade) {
            // A closed channel means the client has gone already.
            let _ = events.send(Event::Unavailable(HUNG_MESSAGE));
        }
    }
}

/// Starts the watchdog thread; it ends when the engine thread does.
pub(super) fn spawn(shared: Arc<Shared>, deadline: Duration) -> std::io::Result<()> {
    let tick = (deadline / CHECKS_PER_DEADLINE).max(Duration::from_millis(1));
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            loop {
                std::thread::sleep(tick);
                match shared.state.load(Ordering::Acquire) {
                    STOPPED => return,
                    // Keep failing: a request may have registered just before the flag.
                    HUNG => shared.watch.fail_live(),
                    RUNNING | SHUTTING_DOWN if shared.watch.overdue(deadline) => {
                        eprintln!("watchdog: a step ran past {deadline:?}; failing requests");
                        shared.state.store(HUNG, Ordering::Release);
                        shared.watch.fail_live();
                    }
                    _ => {}
                }
            }
        })
        .map(|_| ())
}

/// The forward (counted from 1) that [`FAULT_ENV`] asks to hang, if any.
pub(super) fn injected_hang() -> Option<u64> {
    let spec = std::env::var(FAULT_ENV).ok()?;
    let step = spec.strip_prefix("hang:").and_then(|n| n.parse().ok());
    if step.is_none() {
        eprintln!("{FAULT_ENV}={spec:?} ignored: expected hang:N");
    }
    step
}

/// Hangs the calling thread, as a deadlocked kernel would.
pub(super) fn hang() {
    loop {
        std::thread::park();
    }
}
