//! Per-tier admission: a bounded queue in front of a fixed number of concurrent generations,
//! and a circuit breaker that stops calling a tier after repeated failures.

use std::{
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::sync::{Semaphore, SemaphorePermit};

/// Limits of one tier.
#[derive(Debug, Clone, Copy)]
pub struct GuardLimits {
    /// Generations running at once.
    pub concurrency: usize,
    /// Requests allowed to wait for a slot; one more is refused at once.
    pub queue_depth: usize,
    /// Consecutive failures (errors or time-outs) that open the circuit.
    pub breaker_failures: u32,
    /// How long an open circuit stays open before one trial request is let through.
    pub breaker_open: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the tier's queue is full ({0} waiting)")]
    QueueFull(usize),
    #[error("the tier's circuit is open after {failures} consecutive failures; next trial in {retry_in_s} s")]
    CircuitOpen { failures: u32, retry_in_s: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    Closed,
    Open,
    /// Open period over: the next request is a trial.
    HalfOpen,
}

#[derive(Debug)]
pub struct TierGuard {
    limits: GuardLimits,
    slots: Semaphore,
    waiting: AtomicUsize,
    breaker: Mutex<Breaker>,
}

#[derive(Debug, Default)]
struct Breaker {
    consecutive_failures: u32,
    open_until: Option<Instant>,
}

/// Decrements the waiting count however the wait ends (slot, or the caller going away).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl TierGuard {
    pub fn new(limits: GuardLimits) -> TierGuard {
        TierGuard { limits, slots: Semaphore::new(limits.concurrency.max(1)), waiting: AtomicUsize::new(0), breaker: Mutex::new(Breaker::default()) }
    }

    /// Waits for a slot, unless the circuit is open or the queue is full. Dropping the future
    /// (a client that went away) leaves the queue at once.
    pub async fn admit(&self) -> Result<SemaphorePermit<'_>, Refusal> {
        {
            let breaker = self.breaker.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(until) = breaker.open_until {
                let now = Instant::now();
                if now < until {
                    return Err(Refusal::CircuitOpen {
                        failures: breaker.consecutive_failures,
                        retry_in_s: (until - now).as_secs_f64().ceil() as u64,
                    });
                }
            }
        }
        if let Ok(permit) = self.slots.try_acquire() {
            return Ok(permit);
        }
        let waiting = self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        if waiting >= self.limits.queue_depth {
            return Err(Refusal::QueueFull(waiting));
        }
        // The semaphore is never closed, so acquiring only fails if it were.
        self.slots.acquire().await.map_err(|_| Refusal::QueueFull(waiting))
    }

    /// Records how a generation ended; enough consecutive failures open the circuit (again,
    /// when a trial fails).
    pub fn record(&self, succeeded: bool) {
        let mut breaker = self.breaker.lock().unwrap_or_else(PoisonError::into_inner);
        if succeeded {
            *breaker = Breaker::default();
            return;
        }
        breaker.consecutive_failures += 1;
        if breaker.consecutive_failures >= self.limits.breaker_failures.max(1) {
            breaker.open_until = Some(Instant::now() + self.limits.breaker_open);
        }
    }

    pub fn circuit(&self) -> CircuitState {
        let breaker = self.breaker.lock().unwrap_or_else(PoisonError::into_inner);
        match breaker.open_until {
            None => CircuitState::Closed,
            Some(until) if Instant::now() < until => CircuitState::Open,
            Some(_) => CircuitState::HalfOpen,
        }
    }

    /// Requests waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(concurrency: usize, queue_depth: usize) -> TierGuard {
        TierGuard::new(GuardLimits { concurrency, queue_depth, breaker_failures: 2, breaker_open: Duration::from_millis(50) })
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_a_dropped_waiter_leaves_it() {
        let guard = guard(1, 1);
        let running = guard.admit().await.unwrap();
        let waiter = guard.admit();
        let mut waiter = Box::pin(waiter);
        assert!(futures::poll!(&mut waiter).is_pending());
        assert_eq!(guard.queued(), 1);

        assert_eq!(guard.admit().await.unwrap_err(), Refusal::QueueFull(1));

        drop(waiter);
        assert_eq!(guard.queued(), 0);
        drop(running);
        assert!(guard.admit().await.is_ok());
    }

    #[tokio::test]
    async fn repeated_failures_open_the_circuit_until_a_trial_succeeds() {
        let guard = guard(1, 1);
        guard.record(false);
        assert_eq!(guard.circuit(), CircuitState::Closed);
        guard.record(false);

        assert_eq!(guard.circuit(), CircuitState::Open);
        assert!(matches!(guard.admit().await, Err(Refusal::CircuitOpen { failures: 2, .. })));
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(guard.circuit(), CircuitState::HalfOpen);
        drop(guard.admit().await.expect("a trial is let through"));
        guard.record(false);
        assert_eq!(guard.circuit(), CircuitState::Open, "a failed trial re-opens");
        tokio::time::sleep(Duration::from_millis(60)).await;
        guard.record(true);
        assert_eq!(guard.circuit(), CircuitState::Closed);
    }
}
