//! ember: a model-serving HTTP microservice for TorchScript, ONNX and AOTInductor models.
//!
//! The binary (`src/main.rs`) is a thin CLI over this library; integration tests drive the same `Server`.

pub mod access;
pub mod cpus;
pub mod engine;
pub mod fd_limit;
pub mod flags;
pub mod formats;
pub mod grpc;
pub mod http;
pub mod info;
pub mod jobs;
pub mod malloc_arenas;
pub mod memory_limit;
pub mod metrics;
pub mod model_toml;
pub mod reference;
pub mod registry;
pub mod repository;
pub mod rng;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod signature;
pub mod tasks;
pub mod telemetry;
pub mod tls;
pub mod train;
pub mod watched;
