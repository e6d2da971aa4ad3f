//! Who may call the inference routes and how often: API keys (`--api-keys-file`, `keys`) and per-client rate
//! limits (`--rate-limit`, `rate`). One check for both front ends: the HTTP routes' middleware and the gRPC
//! port's layer call `Access::check` with the request's `Authorization` and its peer's address, before its body
//! is read.

pub mod keys;
pub mod rate;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::metrics::AccessMetrics;
use crate::watched::Watched;
use keys::KeySet;
use rate::{Client, RateLimit, RateLimiter};

/// Which checks a route takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// Inference and model metadata: keys and rate limits.
    Api,
    /// Health, metrics, the spec and /docs: open unless `--protect-ops`.
    Ops,
    /// The admin API and the v2 repository extension: the admin token, not an API key.
    Admin,
}

/// Why a request was refused at the door.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// No `Authorization: Bearer` header where keys are required.
    NoKey,
    /// An `Authorization` header that is not `Bearer <key>`.
    NotBearer,
    /// A key that is not in the keys file.
    WrongKey,
    /// Over the client's rate: `limit` is the rate, `retry_after` how long until a request is taken again.
    RateLimited { client: String, limit: RateLimit, retry_after: Duration },
}

impl Refusal {
    /// What the client is told: never the key it sent.
    pub fn message(&self) -> String {
        match self {
            Refusal::NoKey => "this route needs an API key: send `Authorization: Bearer <key>`".into(),
            Refusal::NotBearer => "the Authorization header must be `Bearer <key>`".into(),
            Refusal::WrongKey => "the API key is not valid".into(),
            Refusal::RateLimited { client, limit, retry_after } => format!(
                "{client} is over its rate limit of {} requests/s (burst {}); retry in {:.1} s",
                limit.per_second,
                limit.burst,
                retry_after.as_secs_f64()
            ),
        }
    }

    /// Whole seconds for a `Retry-After` header: at least 1.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Refusal::RateLimited { retry_after, .. } => Some(retry_after.as_secs_f64().ceil().max(1.0) as u64),
            _ => None,
        }
    }
}

/// The settings, from the flags.
#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    pub api_keys_file: Option<PathBuf>,
    pub rate_limit: Option<RateLimit>,
    /// Most clients whose buckets are kept (`rate::RateLimiter`).
    pub max_clients: usize,
    /// Health, metrics and /docs need a key too.
    pub protect_ops: bool,
}

/// The door's state.
pub struct Access {
    keys: Option<Arc<Watched<KeySet>>>,
    rate_limit: Option<RateLimit>,
    limiter: RateLimiter,
    pub protect_ops: bool,
    metrics: AccessMetrics,
}

/// The label of clients counted by address.
const BY_ADDRESS: &str = "address";

impl Access {
    /// Reads the keys file (an error naming it and the bad line stops the start) and watches it: an edit
    /// applies within a second, and a file that turns unreadable or wrong leaves the last good keys in force.
    pub fn new(config: &AccessConfig, metrics: AccessMetrics) -> anyhow::Result<Access> {
        let keys = match &config.api_keys_file {
            Some(path) => Some(open_keys(path.clone())?),
            None => None,
        };
        if config.protect_ops && keys.is_none() {
            anyhow::bail!("--protect-ops needs --api-keys-file: the keys that open health, metrics and /docs");
        }
        Ok(Access {
            keys,
            rate_limit: config.rate_limit,
            limiter: RateLimiter::new(config.max_clients),
            protect_ops: config.protect_ops,
            metrics,
        })
    }

    /// Whether requests through `door` are checked.
    pub fn guards(&self, door: Door) -> bool {
        match door {
            Door::Api => self.keys.is_some() || self.rate_limit.is_some(),
            Door::Ops => self.protect_ops,
            Door::Admin => false,
        }
    }

    /// Lets a request in, or says why not: its key (when keys are set), then its client's rate. On success, the
    /// client's name (a key's name; `None` without keys).
    pub fn check(&self, authorization: Option<&[u8]>, peer: Option<IpAddr>) -> Result<Option<String>, Refusal> {
        let key = match &self.keys {
            Some(keys) => Some(self.authenticate(&keys.get(), authorization)?),
            None => None,
        };
        let client = match &key {
            Some((name, _)) => Some(Client::Key(name.clone())),
            None => peer.map(Client::Address),
        };
        let limit = key.as_ref().and_then(|(_, limit)| *limit).or(self.rate_limit);
        if let (Some(client), Some(limit)) = (client, limit) {
            let taken = self.limiter.take(&client, limit, Instant::now());
            self.metrics.tracked_clients.set(self.limiter.tracked() as i64);
            if let Err(retry_after) = taken {
                let name = match client {
                    Client::Key(name) => name,
                    Client::Address(_) => BY_ADDRESS.to_string(),
                };
                self.metrics.rate_limited.with_label_values(&[&name]).inc();
                let client =
                    if name == BY_ADDRESS { "this client address".to_string() } else { format!("key `{name}`") };
                return Err(Refusal::RateLimited { client, limit, retry_after });
            }
        }
        Ok(key.map(|(name, _)| name))
    }

    /// The presented key's name and own limit.
    fn authenticate(
        &self,
        keys: &KeySet,
        authorization: Option<&[u8]>,
    ) -> Result<(String, Option<RateLimit>), Refusal> {
        let refuse = |refusal: Refusal, reason: &str| {
            self.metrics.key_refusals.with_label_values(&[reason]).inc();
            Err(refusal)
        };
        let Some(header) = authorization else { return refuse(Refusal::NoKey, "missing") };
        let Some(presented) = bearer(header) else { return refuse(Refusal::NotBearer, "malformed") };
        match keys.find(presented) {
            Some(key) => Ok((key.name.clone(), key.limit)),
            None => refuse(Refusal::WrongKey, "invalid"),
        }
    }
}

/// The key of `Bearer <key>` (the scheme in any case, as RFC 9110 has it).
fn bearer(header: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(header).ok()?.trim();
    let (scheme, key) = text.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim()).filter(|key| !key.is_empty())
}

fn open_keys(path: PathBuf) -> anyhow::Result<Arc<Watched<KeySet>>> {
    let read_path = path.clone();
    let read = move || -> anyhow::Result<KeySet> {
        let text = std::fs::read_to_string(&read_path)
            .with_context(|| format!("cannot read the API keys file {}", read_path.display()))?;
        KeySet::parse(&text).map_err(|e| anyhow::anyhow!("the API keys file {}: {e}", read_path.display()))
    };
    let keys = Watched::open(vec![path.clone()], read)?;
    tracing::info!(file = %path.display(), keys = keys.get().len(), "API keys required on the inference routes");
    keys.watch(move |reloaded| match reloaded {
        Ok(keys) => tracing::info!(file = %path.display(), keys = keys.len(), "API keys reloaded"),
        Err(e) => tracing::error!(
            error = format!("{e:#}"),
            "the API keys file changed but cannot be used; the last \
            good keys stay in force until it is fixed"
        ),
    });
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bearer_header_carries_a_key() {
        assert_eq!(bearer(b"Bearer abc"), Some("abc"));
        assert_eq!(bearer(b"bearer   abc  "), Some("abc"));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"abc"), None);
        assert_eq!(bearer(&[0xff, 0xfe]), None);
    }
}
