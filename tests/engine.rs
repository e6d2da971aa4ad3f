//! The worker pool with real TorchScript modules made by tracing (no Python, no mocks): a libtorch error fails
//! only its own batch, and requests whose caller has gone never reach the model.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ember::cpus::Sizing;
use ember::engine::{BatchTask, EngineError, InferenceModule, WorkerPool, WorkerSpec};
use ember::formats::ModelFormat;
use ember::metrics::Metrics;
use ember::model_toml::BatchingConfig;
use tch::{CModule, Device, Kind, Tensor};
use tokio::task::JoinHandle;

/// Each input is a square matrix; the model squares it (`x.matmul(x)`); the output is the sum of the result.
struct SquareAndSum;

impl BatchTask for SquareAndSum {
    type Input = Tensor;
    type Output = f64;

    fn run_batch(&self, model: &InferenceModule, _device: Device, inputs: Vec<Tensor>) -> anyhow::Result<Vec<f64>> {
        let squared = model.forward_one(&[&Tensor::f_stack(&inputs, 0)?]).map_err(anyhow::Error::msg)?;
        Ok((0..inputs.len() as i64).map(|i| squared.get(i).sum(Kind::Double).double_value(&[])).collect())
    }

    fn warmup_input(&self) -> Tensor {
        Tensor::ones([2, 2], (Kind::Float, Device::Cpu))
    }
}

fn traced_square_model(dir: &Path) -> std::path::PathBuf {
    let example = Tensor::ones([1, 2, 2], (Kind::Float, Device::Cpu));
    let module = CModule::create_by_tracing("Square", "forward", &[example], &mut |xs| vec![xs[0].matmul(&xs[0])])
        .expect("tracing works");
    let path = dir.join("square.pt");
    module.save(&path).expect("module saved");
    path
}

fn square_spec(dir: &Path, max_batch_size: usize) -> WorkerSpec {
    WorkerSpec {
        model: "square".into(),
        path: traced_square_model(dir),
        format: ModelFormat::TorchScript,
        device: Device::Cpu,
        task_inputs: vec![],
        task_outputs: vec![],
        optimize: true,
        batching: BatchingConfig { max_batch_size, ..BatchingConfig::default() },
        sizing: Sizing { workers: 1, intra_op_threads: 1, cpus: 1 },
        stand_in: None,
    }
}

fn start(dir: &Path, metrics: &Metrics, max_batch_size: usize) -> WorkerPool<SquareAndSum> {
    WorkerPool::start(square_spec(dir, max_batch_size), SquareAndSum, metrics.for_model("square")).expect("pool starts")
}

fn batches_run(metrics: &Metrics) -> f64 {
    let text = metrics.render();
    text.lines().find_map(|l| l.strip_prefix("ember_batch_size_count{model=\"square\"} ")?.parse().ok()).unwrap_or(0.0)
}

/// Runs `infer` as its own task, as concurrent callers do.
fn spawn_infer(
    pool: &Arc<WorkerPool<SquareAndSum>>,
    side: i64,
    timeout: Duration,
) -> JoinHandle<Result<f64, EngineError>> {
    let pool = Arc::clone(pool);
    tokio::spawn(async move { pool.infer(ones(side), timeout).await })
}

fn ones(side: i64) -> Tensor {
    Tensor::ones([side, side], (Kind::Float, Device::Cpu))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_libtorch_error_fails_only_its_own_batch() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let pool = start(dir.path(), &metrics, 1);
    let timeout = Duration::from_secs(30);
    // A 2x3 matrix cannot be multiplied by itself: libtorch raises inside the TorchScript forward.
    let bad = Tensor::ones([2, 3], (Kind::Float, Device::Cpu));
    let (good, failed, after) =
        tokio::join!(pool.infer(ones(2), timeout), pool.infer(bad, timeout), pool.infer(ones(3), timeout));
    assert_eq!(good.unwrap(), 8.0); // [[2,2],[2,2]]
    match failed {
        Err(EngineError::Inference { model, message }) => {
            assert_eq!(model, "square");
            assert!(
                message.starts_with("RuntimeError: Expected size"),
                "libtorch's own reason, in one line: {message:?}"
            );
        }
        other => panic!("expected an inference error, got {other:?}"),
    }
    assert_eq!(after.unwrap(), 27.0); // 3x3 of threes
    assert_eq!(pool.infer(ones(2), timeout).await.unwrap(), 8.0, "the worker keeps serving");
    pool.shutdown();
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_whose_caller_has_gone_are_dropped_before_inference() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let pool = Arc::new(start(dir.path(), &metrics, 4));
    // Occupy the only worker with a slow product (16 GFLOP of single-threaded matmul: a few hundred ms).
    let slow = spawn_infer(&pool, 2000, Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..3 {
        let gone = pool.infer(ones(2), Duration::from_millis(5)).await;
        assert!(matches!(gone, Err(EngineError::DeadlineExceeded { .. })), "{gone:?}");
    }
    assert_eq!(slow.await.unwrap().unwrap(), 2000f64.powi(3));
    assert_eq!(pool.infer(ones(2), Duration::from_secs(30)).await.unwrap(), 8.0);
    assert_eq!(batches_run(&metrics), 2.0, "only the slow request and the last one reached the model");
    pool.shutdown();
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_finishes_queued_requests_then_refuses_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let pool = Arc::new(start(dir.path(), &metrics, 2));
    let queued: Vec<_> = (0..6).map(|_| spawn_infer(&pool, 300, Duration::from_secs(60))).collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let stopper = Arc::clone(&pool);
    tokio::task::spawn_blocking(move || stopper.shutdown()).await.unwrap();
    for answer in queued {
        assert_eq!(answer.await.unwrap().unwrap(), 300f64.powi(3));
    }
    let refused = pool.infer(ones(2), Duration::from_secs(1)).await;
    assert!(matches!(refused, Err(EngineError::Stopped { .. })), "{refused:?}");
}

/// The square model behind a task whose own code panics on every batch, warm-up's included.
struct PanicsOnEveryBatch;

impl BatchTask for PanicsOnEveryBatch {
    type Input = Tensor;
    type Output = f64;

    fn run_batch(&self, _model: &InferenceModule, _device: Device, _inputs: Vec<Tensor>) -> anyhow::Result<Vec<f64>> {
        panic!("this task cannot handle its input")
    }

    fn warmup_input(&self) -> Tensor {
        ones(2)
    }
}

/// A panic in task code while a pool warms up fails that start with a load error naming it, as a panic while
/// serving fails only its batch: it must not unwind into the thread that loads the model (a registry thread,
/// which would leave the model `loading` for good and the replica never ready).
#[test]
fn a_panic_during_warm_up_fails_the_start_and_not_its_caller() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    match WorkerPool::start(square_spec(dir.path(), 2), PanicsOnEveryBatch, metrics.for_model("square")) {
        Err(EngineError::Load { model, message }) => {
            assert_eq!(model, "square");
            assert!(message.contains("panic: this task cannot handle its input"), "{message}");
        }
        Err(other) => panic!("expected a load error, got {other:?}"),
        Ok(_) => panic!("a pool whose warm-up panics started"),
    }
}
