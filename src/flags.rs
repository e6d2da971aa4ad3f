//! The server's flags: the settings of `ember serve` (every flag also an `EMBER_*` environment variable) and the
//! repository flag every subcommand shares. What a model folder says about its model is `model_toml`'s.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser};

use crate::access::rate::RateLimit;
use crate::access::AccessConfig;
use crate::model_toml::DeviceChoice;
use crate::telemetry::LogFormat;
use crate::tls::TlsFiles;

/// Settings of `ember serve`. Every flag is also an `EMBER_*` environment variable.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on (the container image sets 0.0.0.0).
    #[arg(long, env = "EMBER_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on; 0 picks a free port (the chosen one is logged).
    #[arg(long, env = "EMBER_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Port of the Open Inference Protocol over gRPC (KServe v2's GRPCInferenceService), on the same address;
    /// 0 turns it off.
    #[arg(long, env = "EMBER_GRPC_PORT", default_value_t = 8081)]
    pub grpc_port: u16,
    /// Export traces over OTLP/HTTP to this collector (e.g. http://localhost:4318; /v1/traces is added to a URL
    /// without a path): a span per request with its decode, queue wait, batch forward and encode. Off when unset.
    #[arg(long, env = "EMBER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Device for models whose model.toml says `device = "auto"`: auto (CUDA when present), cpu, cuda, cuda:N.
    #[arg(long, env = "EMBER_DEVICE", default_value = "auto")]
    pub device: DeviceChoice,
    /// Largest request body accepted, in bytes (413 beyond it).
    #[arg(long, env = "EMBER_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Largest decoded image accepted, in pixels (width x height), against decompression bombs.
    #[arg(long, env = "EMBER_MAX_IMAGE_PIXELS", default_value_t = 40_000_000)]
    pub max_image_pixels: u64,
    /// Largest ratio of an image's longer side to its shorter one (resizing scales the shorter side up to the
    /// model's size, so a 1 x 1,000,000 image would become gigabytes).
    #[arg(long, env = "EMBER_MAX_IMAGE_ASPECT", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_image_aspect: u32,
    /// Memory that image decodes in flight may take together, in bytes (each is counted at 8 bytes per pixel
    /// plus 64 MiB of decoder space); requests beyond it wait their turn, up to their deadline.
    #[arg(long, env = "EMBER_MAX_DECODE_BYTES", default_value_t = 1024 * 1024 * 1024)]
    pub max_decode_bytes: u64,
    /// Largest Open Inference Protocol answer, in bytes (JSON counted at 21 bytes per element).
    #[arg(long, env = "EMBER_MAX_RESPONSE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_response_bytes: usize,
    /// Time a client may take to send a request's headers (and an idle keep-alive connection may stay open),
    /// in milliseconds; then the connection is closed.
    #[arg(long, env = "EMBER_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_ms: u64,
    /// Time a client may take to send a request's whole body, in milliseconds (408 beyond it).
    #[arg(long, env = "EMBER_BODY_READ_TIMEOUT_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub body_read_timeout_ms: u64,
    /// Time a client may take to send a whole fine-tuning upload, in milliseconds (408 beyond it).
    #[arg(long, env = "EMBER_UPLOAD_READ_TIMEOUT_MS", default_value_t = 900_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub upload_read_timeout_ms: u64,
    /// Connections served at once; further clients wait in the listen backlog until one closes. Lowered to
    /// what the open-file limit allows, which ember raises to its hard limit at start.
    #[arg(long, env = "EMBER_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Model loads that run at once (at start-up, swaps, admin loads); more wait their turn. Each load's cost
    /// (`resident_bytes` in GET /v1/models/{name}) is the process's memory growth across it: exact with 1.
    #[arg(long, env = "EMBER_MAX_CONCURRENT_LOADS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_loads: u32,
    /// Memory the loaded models may take together, in bytes with an optional unit (`1.5GiB`, `800MiB`, `2GB`).
    /// Unset, every model loads at start and stays. Set, models whose model.toml says `[serving] load =
    /// "on-demand"` load on their first request, and the least recently used idle ones are unloaded to make room.
    #[arg(long, env = "EMBER_MODEL_MEMORY_BUDGET")]
    pub model_memory_budget: Option<ByteSize>,
    /// Time a request may spend queued and running before it is answered 504, in milliseconds.
    #[arg(long, env = "EMBER_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,
    /// How often the model repository is checked for new versions, pins and models, in milliseconds; 0 = never
    /// (POST /admin/models/{name}/reload still swaps).
    #[arg(long, env = "EMBER_WATCH_INTERVAL_MS", default_value_t = 2_000)]
    pub watch_interval_ms: u64,
    /// Bearer token of the admin API (/admin/...); unset, the admin API is off. Never logged.
    #[arg(long, env = "EMBER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<AdminToken>,
    /// Largest fine-tuning upload (POST /admin/models/{name}/fine-tune), in bytes.
    #[arg(long, env = "EMBER_MAX_UPLOAD_BYTES", default_value_t = 512 * 1024 * 1024)]
    pub max_upload_bytes: usize,
    /// Most bytes a fine-tuning archive may unpack to (against decompression bombs).
    #[arg(long, env = "EMBER_MAX_FINE_TUNE_BYTES", default_value_t = 2 * 1024 * 1024 * 1024)]
    pub max_fine_tune_bytes: u64,
    /// Fine-tuning jobs that may wait behind the running one (429 beyond).
    #[arg(long, env = "EMBER_FINE_TUNE_QUEUE", default_value_t = 4)]
    pub fine_tune_queue: usize,
    /// TLS certificate chain (PEM, the server's certificate first) for the HTTP and gRPC ports, its key in
    /// --tls-key and both files read again when they change (new connections use the new certificate).
    #[arg(long, env = "EMBER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The TLS certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "EMBER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) of the client certificates accepted: set, a client without a valid certificate is
    /// refused at the handshake (mutual TLS). Needs --tls-cert and --tls-key
    #[arg(long, env = "EMBER_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// API keys, one a line (`key`, `name:key`, or `name:key:RPS[:BURST]` with the key's own rate limit): set,
    /// every inference route needs `Authorization: Bearer <key>`. Read again when it changes.
    #[arg(long, env = "EMBER_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// Requests per second each client may send, and the burst above it: `RPS[:BURST]` (`20:40`). A client is an
    /// API key, or an address when no --api-keys-file is given. Beyond it: 429 with Retry-After.
    #[arg(long, env = "EMBER_RATE_LIMIT")]
    pub rate_limit: Option<RateLimit>,
    /// Most clients whose rate-limit buckets are kept; beyond it, refilled buckets are forgotten first.
    #[arg(long, env = "EMBER_RATE_LIMIT_CLIENTS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_clients: u32,
    /// Health, metrics, /openapi.yaml and /docs need an API key too (a key of --api-keys-file as for inference).
    #[arg(long, env = "EMBER_PROTECT_OPS")]
    pub protect_ops: bool,
    /// Log format: text for people, json for log collectors.
    #[arg(long, env = "EMBER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The admin token: a string whose Debug never shows it, so that it cannot reach a log.
#[derive(Clone)]
pub struct AdminToken(pub String);

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<hidden>)")
    }
}

impl FromStr for AdminToken {
    type Err = String;
    /// Leading and trailing whitespace is not part of the token: a token read from a file (a Kubernetes secret,
    /// `$(cat token)`) often ends in a newline that the clients' header would not carry.
    fn from_str(s: &str) -> Result<Self, String> {
        let token = s.trim();
        if token.len() < 8 {
            return Err("the admin token must be at least 8 characters long (whitespace around it is ignored)".into());
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("the admin token must not contain whitespace or control characters".into());
        }
        Ok(AdminToken(token.to_string()))
    }
}

/// A number of bytes as an operator writes it: `1073741824`, `1.5GiB`, `800MiB`, `2GB` (powers of 1024 for
/// KiB, MiB, GiB, TiB; of 1000 for kB, MB, GB, TB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let text = s.trim();
        let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
        let (number, unit) = (&text[..split], text[split..].trim());
        let scale: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kib" | "k" => 1 << 10,
            "mib" | "m" => 1 << 20,
            "gib" | "g" => 1 << 30,
            "tib" | "t" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            _ => return Err(format!("unknown unit `{unit}` in `{text}`: use B, KiB, MiB, GiB, TiB, kB, MB, GB or TB")),
        };
        let value: f64 = number.parse().map_err(|_| format!("`{text}` is not a size such as 1.5GiB or 800MiB"))?;
        let bytes = value * scale as f64;
        if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
            return Err(format!("`{text}` is not a size between 1 byte and 16 EiB"));
        }
        Ok(ByteSize(bytes as u64))
    }
}

/// Where the model repository is; shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct RepoArgs {
    /// Model repository: one folder per model (see DESIGN.md).
    #[arg(long = "model-repo", env = "EMBER_MODEL_REPO", default_value = "./models")]
    pub model_repo: PathBuf,
}

impl ServeConfig {
    /// Builds a config as the CLI would from these flags (defaults for the rest); used by tests and tools.
    pub fn from_flags<I, S>(flags: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString> + Clone,
    {
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: ServeConfig,
        }
        let args = std::iter::once(std::ffi::OsString::from("ember")).chain(flags.into_iter().map(Into::into));
        Ok(Wrapper::try_parse_from(args)?.config)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }

    pub fn upload_read_timeout(&self) -> Duration {
        Duration::from_millis(self.upload_read_timeout_ms)
    }

    /// The TLS files, when TLS is on.
    pub fn tls_files(&self) -> Option<TlsFiles> {
        let (cert, key) = (self.tls_cert.clone()?, self.tls_key.clone()?);
        Some(TlsFiles { cert, key, client_ca: self.tls_client_ca.clone() })
    }

    pub fn access(&self) -> AccessConfig {
        AccessConfig {
            api_keys_file: self.api_keys_file.clone(),
            rate_limit: self.rate_limit,
            max_clients: self.rate_limit_clients as usize,
            protect_ops: self.protect_ops,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_token_is_trimmed_and_must_be_one_word() {
        assert_eq!("s3cret-token\n".parse::<AdminToken>().unwrap().0, "s3cret-token");
        assert_eq!("  s3cret-token \r\n".parse::<AdminToken>().unwrap().0, "s3cret-token");
        assert!("short\n".parse::<AdminToken>().is_err());
        assert!("s3cret token".parse::<AdminToken>().is_err());
    }

    #[test]
    fn limits_and_timeouts_are_flags_that_refuse_zero() {
        let config = ServeConfig::from_flags(["--max-image-aspect", "8", "--header-read-timeout-ms", "500"]).unwrap();
        assert_eq!((config.max_image_aspect, config.header_read_timeout()), (8, Duration::from_millis(500)));
        let positive =
            ["--max-image-aspect", "--header-read-timeout-ms", "--body-read-timeout-ms", "--max-connections"];
        for flag in positive.into_iter().chain(["--max-concurrent-loads"]) {
            assert!(ServeConfig::from_flags([flag, "0"]).is_err(), "{flag} 0");
        }
    }

    #[test]
    fn a_memory_budget_is_bytes_with_a_unit() {
        let parsed = |text: &str| text.parse::<ByteSize>().map(|size| size.0);
        assert_eq!(parsed("1.5GiB"), Ok(3 << 29));
        assert_eq!(parsed("800 MiB"), Ok(800 << 20));
        assert_eq!(parsed("2GB"), Ok(2_000_000_000));
        assert_eq!(parsed("4096"), Ok(4096));
        for wrong in ["", "0", "-1GiB", "1.5 parsecs", "GiB", "1e9", "99999999999TiB"] {
            let error = parsed(wrong).unwrap_err();
            assert!(error.contains('`'), "{wrong}: {error}");
        }
        let config = ServeConfig::from_flags(["--model-memory-budget", "1GiB"]).unwrap();
        assert_eq!(config.model_memory_budget, Some(ByteSize(1 << 30)));
        assert!(ServeConfig::from_flags(["--model-memory-budget", "lots"]).is_err());
    }
}
