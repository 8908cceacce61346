//! The memory budget of fetch responses.
//!
//! A fetch reserves its response limit before it reads, shrinks the reservation to
//! what it read, and the reservation travels with the response to the writer,
//! which gives it back once the bytes are on the socket:
//!
//! ```text
//!  fetch ──reserve(limit)──► read ──shrink(read)──► writer ──written──► released
//!    ▲        │ waits while the pool is taken
//!    └─ long poll: nothing read yet, the reservation is given back meanwhile
//! ```
//!
//! The pool is the broker-wide `queued.max.response.bytes`. A connection runs one
//! fetch at a time until its response is written (connection.rs), so a client
//! that never reads pins at most one response, and is closed once that response
//! has waited `response.send.timeout.ms` to be written.
//!
//! No cycle of waits can form: a reservation is held only by a response whose
//! predecessors on its connection are answered already, so it goes as soon as
//! the client reads (or is closed).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The broker-wide pool of response bytes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ResponseBudget {
    pool: Arc<Semaphore>,
    pool_bytes: usize,
}

/// Bytes of the budget held by one response (`None` only if the semaphore were
/// closed, which never happens).
#[derive(Debug)]
pub struct Reservation(Option<OwnedSemaphorePermit>);

impl ResponseBudget {
    pub fn new(pool_bytes: usize) -> ResponseBudget {
        let pool_bytes = pool_bytes.clamp(1, Semaphore::MAX_PERMITS);
        ResponseBudget {
            pool: Arc::new(Semaphore::new(pool_bytes)),
            pool_bytes,
        }
    }

    /// A budget with room for anything, for tests that call handlers directly.
    pub fn unlimited() -> ResponseBudget {
        ResponseBudget::new(Semaphore::MAX_PERMITS)
    }

    /// Waits until `bytes` (capped at the pool's size) are free and takes them.
    pub async fn reserve(&self, bytes: usize) -> Reservation {
        let n = bytes.clamp(1, self.pool_bytes).min(u32::MAX as usize) as u32;
        let permit = self.pool.clone().acquire_many_owned(n).await.ok();
        held_gauge(permit.as_ref().map_or(0, |p| p.num_permits() as i64));
        Reservation(permit)
    }

    /// Bytes of the pool not held by any response.
    pub fn available(&self) -> usize {
        self.pool.available_permits()
    }

    pub fn pool_bytes(&self) -> usize {
        self.pool_bytes
    }
}

impl Reservation {
    /// Gives back everything above `bytes`.
    pub fn shrink_to(&mut self, bytes: usize) {
        if let Some(permit) = &mut self.0 {
            let held = permit.num_permits();
            let keep = bytes.max(1);
            if held > keep {
                drop(permit.split(held - keep));
                held_gauge(-((held - keep) as i64));
            }
        }
    }

    pub fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |p| p.num_permits())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        held_gauge(-(self.bytes() as i64));
    }
}

fn held_gauge(delta: i64) {
    ferry_core::metrics::metrics()
        .response_bytes_held
        .add(delta);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_are_capped_shrunk_and_returned() {
        let budget = ResponseBudget::new(1000);
        let mut r1 = budget.reserve(10_000).await;
        assert_eq!(r1.bytes(), 1000, "capped at the pool");
        assert_eq!(budget.available(), 0);
        r1.shrink_to(100);
        assert_eq!(r1.bytes(), 100);
        assert_eq!(budget.available(), 900);
        let r2 = budget.reserve(600).await;
        assert_eq!(budget.available(), 300);
        drop((r1, r2));
        assert_eq!(budget.available(), 1000);
    }

    #[tokio::test]
    async fn a_full_pool_makes_others_wait_until_bytes_are_returned() {
        let budget = ResponseBudget::new(1000);
        let held = budget.reserve(1000).await;
        let other = budget.clone();
        let waiter = tokio::spawn(async move { other.reserve(500).await.bytes() });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(held);
        assert_eq!(waiter.await.expect("join"), 500);
    }
}
