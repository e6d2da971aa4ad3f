//! The batching decision as a small pure state machine: what to run next, given what is queued and the time.
//!
//! It knows nothing of threads, tensors or clocks; the worker pool (`pool.rs`) feeds it `Instant`s.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    pub max_size: usize,
    /// How long the oldest entry may wait for the batch to fill before a partial batch runs.
    pub max_delay: Duration,
}

/// What a worker should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<T> {
    /// Run these entries as one batch, oldest first.
    Run(Vec<T>),
    /// Entries are waiting for more to join; ask again at this instant (or when something is pushed).
    WaitUntil(Instant),
    /// Nothing is queued.
    Empty,
}

/// A bounded FIFO of entries with their arrival times.
#[derive(Debug)]
pub struct Batcher<T> {
    queue: VecDeque<(T, Instant)>,
    capacity: usize,
}

impl<T> Batcher<T> {
    pub fn new(capacity: usize) -> Self {
        Batcher { queue: VecDeque::with_capacity(capacity.min(1024)), capacity }
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether `entries` more fit in the queue (a request of several entries is admitted all or none).
    pub fn has_room_for(&self, entries: usize) -> bool {
        self.queue.len() + entries <= self.capacity
    }

    /// Appends an entry, or hands it back when the queue is full (admission control: the caller answers 429).
    pub fn push(&mut self, entry: T, now: Instant) -> Result<(), T> {
        if !self.has_room_for(1) {
            return Err(entry);
        }
        self.queue.push_back((entry, now));
        Ok(())
    }

    /// Removes and returns every entry for which `doomed` is true (abandoned or expired), keeping order.
    pub fn remove_where(&mut self, mut doomed: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut removed = Vec::new();
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for (entry, at) in self.queue.drain(..) {
            if doomed(&entry) {
                removed.push(entry);
            } else {
                kept.push_back((entry, at));
            }
        }
        self.queue = kept;
        removed
    }

    /// A full batch runs at once; a partial one runs when its oldest entry has waited `max_delay`.
    pub fn next_batch(&mut self, policy: BatchPolicy, now: Instant) -> Next<T> {
        let Some(&(_, oldest)) = self.queue.front() else {
            return Next::Empty;
        };
        let max_size = policy.max_size.max(1);
        let due = oldest + policy.max_delay;
        if self.queue.len() >= max_size || now >= due {
            let take = self.queue.len().min(max_size);
            Next::Run(self.queue.drain(..take).map(|(entry, _)| entry).collect())
        } else {
            Next::WaitUntil(due)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_size: usize, delay_ms: u64) -> BatchPolicy {
        BatchPolicy { max_size, max_delay: Duration::from_millis(delay_ms) }
    }

    #[test]
    fn empty_queue_has_nothing_to_run() {
        let mut b: Batcher<u32> = Batcher::new(4);
        assert_eq!(b.next_batch(policy(4, 5), Instant::now()), Next::Empty);
    }

    #[test]
    fn full_batch_runs_immediately_in_arrival_order() {
        let t0 = Instant::now();
        let mut b = Batcher::new(10);
        for i in 0..5 {
            b.push(i, t0).unwrap();
        }
        assert_eq!(b.next_batch(policy(4, 1000), t0), Next::Run(vec![0, 1, 2, 3]));
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn partial_batch_waits_for_the_oldest_entrys_deadline() {
        let t0 = Instant::now();
        let mut b = Batcher::new(10);
        b.push("a", t0).unwrap();
        b.push("b", t0 + Duration::from_millis(3)).unwrap();
        let due = t0 + Duration::from_millis(5);
        assert_eq!(b.next_batch(policy(4, 5), t0 + Duration::from_millis(4)), Next::WaitUntil(due));
        assert_eq!(b.next_batch(policy(4, 5), due), Next::Run(vec!["a", "b"]));
        assert!(b.is_empty());
    }

    #[test]
    fn zero_delay_runs_whatever_is_queued() {
        let t0 = Instant::now();
        let mut b = Batcher::new(10);
        b.push(1, t0).unwrap();
        b.push(2, t0).unwrap();
        assert_eq!(b.next_batch(policy(8, 0), t0), Next::Run(vec![1, 2]));
    }

    #[test]
    fn full_queue_hands_the_entry_back() {
        let t0 = Instant::now();
        let mut b = Batcher::new(2);
        b.push(1, t0).unwrap();
        b.push(2, t0).unwrap();
        assert_eq!(b.push(3, t0), Err(3));
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn removed_entries_never_reach_a_batch_and_free_capacity() {
        let t0 = Instant::now();
        let mut b = Batcher::new(3);
        for i in 0..3 {
            b.push(i, t0).unwrap();
        }
        assert_eq!(b.remove_where(|i| i % 2 == 0), vec![0, 2]);
        b.push(7, t0).unwrap();
        assert_eq!(b.next_batch(policy(4, 0), t0), Next::Run(vec![1, 7]));
    }

    #[test]
    fn max_size_zero_is_treated_as_one() {
        let t0 = Instant::now();
        let mut b = Batcher::new(3);
        b.push(1, t0).unwrap();
        b.push(2, t0).unwrap();
        assert_eq!(b.next_batch(policy(0, 0), t0), Next::Run(vec![1]));
    }
}
