//! The service layer: what every front end does, whichever protocol carries the request. The HTTP routes
//! (`http/`) and the gRPC service (`grpc/`) are adapters over it: they read their framing, call these functions,
//! and write the answer, or turn an `ApiError`'s kind into a status or a code from one table each.
//!
//! It owns the state they share (`AppState`: the registry, the metrics, the limits, the decode-memory budget,
//! the admin API), finding a model and version (`models`), the Open Inference Protocol's checks and tensor
//! conversions (`inference`, `tensors`), readiness and repository control (`repository`), the admin token
//! (`admin`), CPU work off the async workers (`offload`), and continuing a client's trace (`trace`).

pub mod admin;
pub mod decode_memory;
pub mod error;
pub mod inference;
pub mod load_wait;
pub mod models;
pub mod offload;
pub mod repository;
pub mod tensors;
pub mod trace;

use std::sync::Arc;
use std::time::Duration;

pub use error::{ApiError, ErrorKind};

use crate::access::Access;
use crate::flags::ServeConfig;
use crate::jobs::Jobs;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::tasks::image::ImageLimits;
use crate::train::upload::UnpackLimits;
use admin::Admin;
use decode_memory::DecodeMemory;

/// The most a request may send and how long it may take to: `--max-body-bytes` and `--body-read-timeout-ms`
/// (or the upload flags, for a fine-tuning upload). An HTTP body and a gRPC message are both held to it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit {
    pub max_bytes: usize,
    /// The whole body must arrive within this time: a client that stalls (or drips a byte at a time) is cut off
    /// with a 408 instead of holding a connection and a task forever.
    pub read_timeout: Duration,
    /// The flags that set the two, for the errors.
    pub flags: BodyFlags,
}

/// Which flags set a `BodyLimit`.
#[derive(Debug, Clone, Copy)]
pub enum BodyFlags {
    /// `--max-body-bytes` and `--body-read-timeout-ms`.
    Request,
    /// `--max-upload-bytes` and `--upload-read-timeout-ms`.
    Upload,
}

impl BodyFlags {
    /// The size flag and the time flag, as errors name them.
    pub fn names(self) -> (&'static str, &'static str) {
        match self {
            BodyFlags::Request => ("--max-body-bytes", "--body-read-timeout-ms"),
            BodyFlags::Upload => ("--max-upload-bytes", "--upload-read-timeout-ms"),
        }
    }
}

/// Request limits that every front end enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    pub body: BodyLimit,
    pub image: ImageLimits,
    pub max_response_bytes: usize,
    pub request_timeout: Duration,
}

/// What the front ends share: one per server, cloned into every handler and RPC.
#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub decode_memory: Arc<DecodeMemory>,
    /// Present only when an admin token is set.
    pub admin: Option<Admin>,
    /// API keys and rate limits (`--api-keys-file`, `--rate-limit`): open when neither is set.
    pub access: Arc<Access>,
}

impl AppState {
    /// The state from the server's flags: the limits, the decode-memory budget, the API keys (an unusable keys
    /// file is an error here, naming it), and the admin API (its fine-tuning runner starts here) when a token
    /// is set.
    pub fn new(config: &ServeConfig, registry: Arc<Registry>, metrics: Arc<Metrics>) -> anyhow::Result<AppState> {
        let access = Arc::new(Access::new(&config.access(), metrics.access.clone())?);
        let limits = Limits {
            body: BodyLimit {
                max_bytes: config.max_body_bytes,
                read_timeout: config.body_read_timeout(),
                flags: BodyFlags::Request,
            },
            image: ImageLimits { max_pixels: config.max_image_pixels, max_aspect: config.max_image_aspect },
            max_response_bytes: config.max_response_bytes,
            request_timeout: config.request_timeout(),
        };
        let admin = config.admin_token.as_ref().map(|token| Admin {
            token: token.0.clone(),
            jobs: Jobs::start(Arc::clone(&registry), Arc::clone(&metrics), config.fine_tune_queue),
            upload: BodyLimit {
                max_bytes: config.max_upload_bytes,
                read_timeout: config.upload_read_timeout(),
                flags: BodyFlags::Upload,
            },
            unpack: UnpackLimits { max_bytes: config.max_fine_tune_bytes, max_entries: 1_000_000 },
        });
        let decode_memory = Arc::new(DecodeMemory::new(config.max_decode_bytes));
        Ok(AppState { registry, metrics, limits, decode_memory, admin, access })
    }
}
