//! The API keys file (`--api-keys-file`): one key a line, `name:key` to give it a name that metrics and logs
//! can show, `name:key:RPS[:BURST]` to give it its own rate limit. Blank lines and lines starting with `#` are
//! skipped; whitespace around a line is not part of it.
//!
//! Only each key's SHA-256 is kept. A presented key is hashed and compared with every key's hash in constant time
//! (no early exit, no comparison that stops at the first differing byte), so the time of a refusal says nothing
//! about how close a guess was.

use std::collections::HashSet;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::rate::RateLimit;

/// Shorter keys are refused: they can be guessed (`openssl rand -hex 32` makes a 64-character one).
pub const MIN_KEY_CHARS: usize = 16;

/// A client's key, as the file names it.
#[derive(Debug)]
pub struct ApiKey {
    /// The name given in the file, or `line-N` (never the key itself).
    pub name: String,
    /// Its own limit, over `--rate-limit`'s.
    pub limit: Option<RateLimit>,
    digest: [u8; 32],
}

/// Every key of the file.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<ApiKey>,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl KeySet {
    /// The keys of a file's text; an error names the line and what is wrong with it (never the key).
    pub fn parse(text: &str) -> Result<KeySet, String> {
        let mut keys: Vec<ApiKey> = Vec::new();
        let (mut names, mut digests) = (HashSet::new(), HashSet::new());
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = parse_line(line, number).map_err(|e| format!("line {number}: {e}"))?;
            if !names.insert(key.name.clone()) {
                return Err(format!("line {number}: the name `{}` is given to two keys", key.name));
            }
            if !digests.insert(key.digest) {
                return Err(format!("line {number}: the same key is on an earlier line"));
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err("it holds no key (one key a line, or name:key)".into());
        }
        Ok(KeySet { keys })
    }

    /// The key `presented` is, if any: every key is compared, in constant time.
    pub fn find(&self, presented: &str) -> Option<&ApiKey> {
        let presented = digest(presented);
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.digest.ct_eq(&presented)) {
                found = Some(key);
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn parse_line(line: &str, number: usize) -> Result<ApiKey, String> {
    let fields: Vec<&str> = line.split(':').collect();
    let (name, key, limit) = match fields.as_slice() {
        [key] => (format!("line-{number}"), *key, None),
        [name, key] => (checked_name(name)?, *key, None),
        [name, key, limit @ ..] if limit.len() <= 2 => {
            let limit = limit.join(":").parse::<RateLimit>()?;
            (checked_name(name)?, *key, Some(limit))
        }
        _ => return Err("a line is `key`, `name:key` or `name:key:RPS[:BURST]` (keys hold no `:`)".into()),
    };
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("the key of `{name}` holds a space or a control character, which a header cannot carry"));
    }
    if key.chars().count() < MIN_KEY_CHARS {
        return Err(format!(
            "the key of `{name}` is {} characters; use at least {MIN_KEY_CHARS} (openssl rand -hex 32)",
            key.chars().count()
        ));
    }
    Ok(ApiKey { name, limit, digest: digest(key) })
}

/// A key's name is a metric label and a log field: letters, digits, `-`, `_`, `.`.
fn checked_name(name: &str) -> Result<String, String> {
    let name = name.trim();
    let fine = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > 64 || !name.chars().all(fine) {
        return Err(format!(
            "the name `{name}` must be 1 to 64 letters, digits, `-`, `_` or `.` (it labels metrics and logs)"
        ));
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "0123456789abcdef0123";
    const KEY_B: &str = "fedcba9876543210fedc";

    #[test]
    fn names_limits_blank_lines_and_comments() {
        let text = format!("# ops keys\n\n  {KEY_A}  \nbatch:{KEY_B}:5:10\n\n");
        let keys = KeySet::parse(&text).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.find(KEY_A).unwrap().name, "line-3");
        let batch = keys.find(KEY_B).unwrap();
        assert_eq!(batch.name, "batch");
        assert_eq!(batch.limit, Some(RateLimit { per_second: 5.0, burst: 10.0 }));
        assert!(keys.find("0123456789abcdef0124").is_none(), "a near miss is no key");
        assert!(keys.find("").is_none());
    }

    #[test]
    fn a_bad_line_is_named_without_its_key() {
        let cases = [
            (format!("a:{KEY_A}\nb:with space in it 12345"), "line 2", "space"),
            ("short-key-1".to_string(), "line 1", "at least 16"),
            (format!("a:{KEY_A}\na:{KEY_B}"), "line 2", "two keys"),
            (format!("a:{KEY_A}\nb:{KEY_A}"), "line 2", "earlier line"),
            (format!("bad name:{KEY_A}"), "line 1", "letters, digits"),
            (format!("a:{KEY_A}:fast"), "line 1", "rate"),
            (format!("a:{KEY_A}:1:2:3"), "line 1", "name:key:RPS"),
            ("\n# only a comment\n".to_string(), "no key", "no key"),
        ];
        for (text, line, what) in cases {
            let error = KeySet::parse(&text).unwrap_err();
            assert!(error.contains(line) && error.contains(what), "{text:?}: {error}");
            assert!(!error.contains(KEY_A) && !error.contains("with space"), "the error shows no key: {error}");
        }
    }
}
