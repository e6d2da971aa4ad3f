//! Per-client rate limits (`--rate-limit RPS[:BURST]`): a token bucket per client (an API key's name, or the
//! client's address when no keys are set), held in memory.
//!
//! At most `max_clients` buckets are kept, so that a flood of new addresses cannot grow the table without
//! limit: when it is full, the buckets that have refilled (which a new bucket would equal) are dropped, or else
//! the fullest one, so that the clients being limited are the last to be forgotten.

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A rate: `per_second` tokens refill each second, up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: f64,
}

impl FromStr for RateLimit {
    type Err = String;
    /// `RPS` or `RPS:BURST` (`20:40`); the burst is one second's worth when not given.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a rate limit: RPS or RPS:BURST, such as 20 or 20:40");
        let (rate, burst) = match s.trim().split_once(':') {
            Some((rate, burst)) => (rate, Some(burst)),
            None => (s.trim(), None),
        };
        let per_second: f64 = rate.trim().parse().map_err(|_| bad())?;
        let burst: f64 = match burst {
            Some(burst) => burst.trim().parse().map_err(|_| bad())?,
            None => per_second.ceil().max(1.0),
        };
        if !(per_second.is_finite() && per_second > 0.0) {
            return Err(format!("the rate limit's RPS must be above 0: `{s}`"));
        }
        if !(burst.is_finite() && burst >= 1.0) {
            return Err(format!("the rate limit's BURST must be at least 1: `{s}`"));
        }
        Ok(RateLimit { per_second, burst })
    }
}

/// Whom a bucket counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Client {
    /// An API key, by its name.
    Key(String),
    /// A client without keys, by its address.
    Address(IpAddr),
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
    limit: RateLimit,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let gained = now.saturating_duration_since(self.at).as_secs_f64() * self.limit.per_second;
        self.tokens = (self.tokens + gained).min(self.limit.burst);
        self.at = now;
    }

    /// How full it is now, from 0 to 1.
    fn fill(&self, now: Instant) -> f64 {
        let gained = now.saturating_duration_since(self.at).as_secs_f64() * self.limit.per_second;
        ((self.tokens + gained) / self.limit.burst).min(1.0)
    }
}

/// Every client's bucket.
pub struct RateLimiter {
    max_clients: usize,
    buckets: Mutex<HashMap<Client, Bucket>>,
    /// The table's size after the last `take`, for the metric without taking the lock again.
    tracked: AtomicUsize,
}

impl RateLimiter {
    pub fn new(max_clients: usize) -> RateLimiter {
        RateLimiter {
            max_clients: max_clients.max(1),
            buckets: Mutex::new(HashMap::new()),
            tracked: AtomicUsize::new(0),
        }
    }

    /// Takes a token from `client`'s bucket (made at `limit`, full, when it has none), or says how long until
    /// one is there.
    pub fn take(&self, client: &Client, limit: RateLimit, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let new = !buckets.contains_key(client);
        if new && buckets.len() >= self.max_clients {
            make_room(&mut buckets, now);
        }
        self.tracked.store(buckets.len() + usize::from(new), Ordering::Relaxed);
        let bucket = buckets.entry(client.clone()).or_insert(Bucket { tokens: limit.burst, at: now, limit });
        // A changed limit (the keys file was edited) applies from now on.
        bucket.limit = limit;
        bucket.refill(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - bucket.tokens) / limit.per_second))
    }

    /// Clients tracked now (the metric's value).
    pub fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }
}

/// Drops every full bucket (a new one would be the same), or else the fullest.
fn make_room(buckets: &mut HashMap<Client, Bucket>, now: Instant) {
    let before = buckets.len();
    buckets.retain(|_, bucket| bucket.fill(now) < 1.0);
    if buckets.len() == before {
        let fullest = buckets.iter().max_by(|(_, a), (_, b)| a.fill(now).total_cmp(&b.fill(now)));
        if let Some(client) = fullest.map(|(client, _)| client.clone()) {
            buckets.remove(&client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(n: u32) -> Client {
        Client::Address(IpAddr::from(n.to_be_bytes()))
    }

    #[test]
    fn rates_parse_with_and_without_a_burst() {
        assert_eq!("20:40".parse(), Ok(RateLimit { per_second: 20.0, burst: 40.0 }));
        assert_eq!("0.5".parse(), Ok(RateLimit { per_second: 0.5, burst: 1.0 }));
        for bad in ["", "0", "-1", "fast", "20:0", "20:x", "inf", "NaN:3"] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let limiter = RateLimiter::new(16);
        let limit = RateLimit { per_second: 10.0, burst: 3.0 };
        let (client, start) = (address(1), Instant::now());
        for _ in 0..3 {
            assert_eq!(limiter.take(&client, limit, start), Ok(()));
        }
        let wait = limiter.take(&client, limit, start).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        assert_eq!(limiter.take(&client, limit, start + Duration::from_millis(100)), Ok(()));
        assert!(limiter.take(&address(2), limit, start).is_ok(), "another client has its own bucket");
    }

    #[test]
    fn a_flood_of_new_clients_stays_within_the_bound() {
        let limiter = RateLimiter::new(100);
        let limit = RateLimit { per_second: 0.001, burst: 5.0 };
        let start = Instant::now();
        for _ in 0..5 {
            limiter.take(&address(0), limit, start).unwrap();
        }
        // Each flooding address takes one token of five: fuller than the drained client, which is kept.
        for n in 1..10_000 {
            limiter.take(&address(n), limit, start).unwrap();
            assert!(limiter.tracked() <= 100);
        }
        assert!(limiter.take(&address(0), limit, start).is_err(), "the flood did not reset a limited client");
    }
}
