//! Waiting without sleeping, for the plan's `HOST_SPIN_US`: a host thread of a
//! tensor-parallel server that sleeps while it waits for the GPU or for another thread
//! wakes tens of microseconds late, and every decode step waits like that two or three
//! times (a step of an 8B model on two GPUs takes about 3.5 ms). For the plan's spin a
//! wait polls; after it, it sleeps or blocks as before, so an idle server idles.

use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use crate::plan_cuda;

/// One wait's polling phase: until when it spins.
pub struct Spin {
    until: Instant,
}

impl Spin {
    /// A wait that starts now.
    pub fn start() -> Self {
        Self {
            until: Instant::now() + Duration::from_micros(plan_cuda::HOST_SPIN_US as u64),
        }
    }

    /// Whether the wait is still in its polling phase.
    pub fn spinning(&self) -> bool {
        Instant::now() < self.until
    }

    /// Between two polls: a CPU pause while spinning, else a sleep of `poll`.
    pub fn pause(&self, poll: Duration) {
        if self.spinning() {
            std::hint::spin_loop();
        } else {
            std::thread::sleep(poll);
        }
    }
}

/// The next message on `rx`, polled for the plan's spin and then blocked for, up to
/// `timeout` in all (`None`: no limit).
pub fn recv<T>(rx: &Receiver<T>, timeout: Option<Duration>) -> Result<T, RecvTimeoutError> {
    let (start, spin) = (Instant::now(), Spin::start());
    while spin.spinning() {
        match rx.try_recv() {
            Ok(message) => return Ok(message),
            Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
            Err(TryRecvError::Empty) => std::hint::spin_loop(),
        }
    }
    match timeout {
        Some(t) => rx.recv_timeout(t.saturating_sub(start.elapsed())),
        None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_message_sent_during_or_after_the_spin_arrives() {
        let (tx, rx) = mpsc::channel();
        tx.send(1).unwrap();
        assert_eq!(recv(&rx, None), Ok(1));
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_micros(
                plan_cuda::HOST_SPIN_US as u64 + 20_000,
            ));
            tx.send(2).unwrap();
        });
        assert_eq!(recv(&rx, Some(Duration::from_secs(30))), Ok(2));
        late.join().unwrap();
        assert_eq!(recv(&rx, None), Err(RecvTimeoutError::Disconnected));
    }

    #[test]
    fn the_timeout_counts_the_spin() {
        let (_tx, rx) = mpsc::channel::<()>();
        let start = Instant::now();
        let limit = Duration::from_micros(plan_cuda::HOST_SPIN_US as u64 + 30_000);
        assert_eq!(recv(&rx, Some(limit)), Err(RecvTimeoutError::Timeout));
        let waited = start.elapsed();
        assert!(
            waited >= limit && waited < limit + Duration::from_secs(1),
            "{waited:?}"
        );
    }
}
