//! A model's worker pool: OS threads that take batches from one shared, bounded queue and run them through one
//! TorchScript module they share (or, with `batching.share_weights = false`, a copy each).
//!
//! Why a mutex + condvar rather than a channel: several workers share one queue, and the batching decision
//! (`Batcher::next_batch`) needs to see the whole queue, not one message at a time.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tch::{Device, Tensor};
use tokio::sync::oneshot;

use super::batcher::{BatchPolicy, Batcher, Next};
use super::fault::{catch_panic, torch_error_summary};
use super::module::{InferenceModule, StandIn};
use super::priority;
use super::EngineError;
use crate::cpus::Sizing;
use crate::formats::ModelFormat;
use crate::metrics::ModelMetrics;
use crate::model_toml::BatchingConfig;
use crate::signature::TensorSpec;

/// What a task does on a worker thread. One implementation per task in `tasks/`.
pub trait BatchTask: Send + Sync + 'static {
    /// One request's model input, already validated and preprocessed off the worker.
    type Input: Send + 'static;
    /// One request's model output.
    type Output: Send + 'static;

    /// Runs one batch through the model; returns exactly one output per input, in order.
    fn run_batch(
        &self,
        model: &InferenceModule,
        device: Device,
        inputs: Vec<Self::Input>,
    ) -> anyhow::Result<Vec<Self::Output>>;

    /// A representative input for warm-up.
    fn warmup_input(&self) -> Self::Input;

    /// Whether every input of this task has one shape (image classification: the crop), so that each batch
    /// size is a shape serving will meet and is worth warming. Tasks whose shapes change with every request
    /// (text lengths, image sizes) warm batch size 1 only: one pass runs every kernel once, and warming the
    /// other sizes at one made-up shape cost sentiment and the style networks 1.3-1.7 s of start-up each
    /// (bench/RESULTS.md).
    fn fixed_input_shape(&self) -> bool {
        true
    }

    /// Checks a warm-up output against what the task expects (e.g. one score per label), so a mismatched
    /// model fails at load time with a clear message instead of at the first request.
    fn check_output(&self, _output: &Self::Output) -> Result<(), String> {
        Ok(())
    }
}

/// Where a pool's model comes from and how it runs.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub model: String,
    /// The version's file in `format`.
    pub path: PathBuf,
    pub format: ModelFormat,
    pub device: Device,
    /// What the task feeds the model and reads back (its Open Inference Protocol signature), checked against a
    /// graph that declares its own tensors.
    pub task_inputs: Vec<TensorSpec>,
    pub task_outputs: Vec<TensorSpec>,
    /// Freeze and optimise the module for inference at load time (model.toml `optimize`).
    pub optimize: bool,
    pub batching: BatchingConfig,
    /// Workers and their intra-op threads (model.toml's `auto` resolved on this machine's CPUs).
    pub sizing: Sizing,
    /// Run this instead of loading `path` (HTTP-contract tests only).
    pub stand_in: Option<StandIn>,
}

/// What a job asks of a worker: the task's own input (the REST routes), or the model-level tensors of the Open
/// Inference Protocol, which run through `forward_batched`. Both kinds share the queue and the batches.
enum Work<I> {
    Task(I),
    Tensors(Vec<Tensor>),
}

enum Answer<O> {
    Task(O),
    Tensors(Vec<Tensor>),
}

type Reply<O> = oneshot::Sender<Result<Answer<O>, EngineError>>;

struct Job<T: BatchTask> {
    work: Work<T::Input>,
    deadline: Instant,
    enqueued_at: Instant,
    reply: Reply<T::Output>,
    trace: JobTrace,
}

/// A job's place in its request's trace: `queue_wait` runs from the push until a worker takes the job, and
/// `batch_forward` (a sibling, with the batch's size) while its batch runs. Disabled spans when nobody listens.
struct JobTrace {
    request: tracing::Span,
    queue_wait: tracing::Span,
}

impl JobTrace {
    /// Called in the request's span: its spans are children of the request's.
    fn start() -> JobTrace {
        JobTrace { request: tracing::Span::current(), queue_wait: tracing::info_span!("queue_wait") }
    }

    /// Ends the wait and starts the forward pass of a batch of `batch_size`.
    fn forward(self, batch_size: usize) -> tracing::Span {
        drop(self.queue_wait);
        tracing::info_span!(parent: &self.request, "batch_forward", batch_size = batch_size as i64)
    }
}

impl<T: BatchTask> Job<T> {
    /// The caller has gone (client disconnected or its timeout fired): computing the answer would be waste.
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
}

struct PoolState<T: BatchTask> {
    batcher: Batcher<Job<T>>,
    closed: bool,
    /// Workers waiting for work, most recently idle last.
    idle: Vec<usize>,
    /// Workers running a batch.
    busy: usize,
}

struct Shared<T: BatchTask> {
    spec: WorkerSpec,
    task: T,
    policy: BatchPolicy,
    state: Mutex<PoolState<T>>,
    /// One per worker, so that new work wakes the most recently idle worker, whose caches still hold the
    /// model (waking the longest-idle one, as a shared condvar does, costs about 1 ms per MobileNetV2 request).
    wakers: Vec<Condvar>,
    metrics: ModelMetrics,
}

impl<T: BatchTask> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, PoolState<T>> {
        // The lock is never held across a forward pass or user code, so a poisoned lock still holds a
        // consistent queue.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Parks worker `index` until new work or `timeout`; returns the re-acquired lock.
    fn wait<'a>(
        &'a self,
        mut state: MutexGuard<'a, PoolState<T>>,
        index: usize,
        timeout: Option<Duration>,
    ) -> MutexGuard<'a, PoolState<T>> {
        state.idle.push(index);
        let waker = &self.wakers[index];
        let mut state = match timeout {
            None => waker.wait(state).unwrap_or_else(PoisonError::into_inner),
            Some(timeout) => waker.wait_timeout(state, timeout).unwrap_or_else(PoisonError::into_inner).0,
        };
        state.idle.retain(|&i| i != index);
        state
    }

    fn queue_full(&self, capacity: usize) -> EngineError {
        EngineError::queue_full(&self.spec.model, capacity)
    }

    fn close(&self) {
        self.lock().closed = true;
        self.wakers.iter().for_each(Condvar::notify_all);
    }

    fn error(&self, make: impl FnOnce(String) -> EngineError) -> EngineError {
        make(self.spec.model.clone())
    }
}

pub struct WorkerPool<T: BatchTask> {
    shared: Arc<Shared<T>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl<T: BatchTask> WorkerPool<T> {
    /// Loads and warms up the module (one copy, or one per worker without `share_weights`) on the calling
    /// thread, then starts the workers. Returns once they are serving, or the load error.
    pub fn start(spec: WorkerSpec, task: T, metrics: ModelMetrics) -> Result<Self, EngineError> {
        let workers = spec.sizing.workers;
        let shared = Arc::new(Shared {
            policy: BatchPolicy {
                max_size: spec.batching.max_batch_size,
                max_delay: Duration::from_millis(spec.batching.max_delay_ms),
            },
            state: Mutex::new(PoolState {
                batcher: Batcher::new(spec.batching.queue_capacity),
                closed: false,
                idle: Vec::with_capacity(workers),
                busy: 0,
            }),
            wakers: (0..workers).map(|_| Condvar::new()).collect(),
            spec,
            task,
            metrics,
        });
        let load_error = |message| shared.error(|model| EngineError::Load { model, message });
        let copies = if shared.spec.batching.share_weights { 1 } else { workers };
        let modules: Vec<Arc<InferenceModule>> = (0..copies)
            .map(|_| load_and_warm_up(&shared).map(Arc::new))
            .collect::<Result<_, _>>()
            .map_err(load_error)?;
        let pool = WorkerPool { shared: Arc::clone(&shared), threads: Mutex::new(Vec::with_capacity(workers)) };
        for index in 0..workers {
            let (worker_shared, module) = (Arc::clone(&shared), Arc::clone(&modules[index % copies]));
            // At serving priority, also when this load runs at a load's (`priority`).
            let name = format!("ember-{}-{index}", shared.spec.model);
            let spawned = priority::spawn_serving(name, move || worker_main(&worker_shared, index, &module));
            match spawned {
                Ok(handle) => pool.threads.lock().unwrap_or_else(PoisonError::into_inner).push(handle),
                Err(e) => {
                    pool.shutdown();
                    return Err(load_error(format!("cannot start a worker thread: {e}")));
                }
            }
        }
        Ok(pool)
    }

    /// Queues one input and waits for its output, for at most `timeout` in all.
    /// A full queue is refused at once: waiting for room would only move the overload into the client.
    pub async fn infer(&self, input: T::Input, timeout: Duration) -> Result<T::Output, EngineError> {
        let mut outputs = self.infer_all(vec![input], timeout).await?;
        outputs.pop().ok_or_else(|| self.shared.error(|model| EngineError::WorkerLost { model }))
    }

    /// Queues several inputs of one request together (all or none: a queue without room for all of them refuses
    /// the request) and waits for every output, in input order.
    pub async fn infer_all(&self, inputs: Vec<T::Input>, timeout: Duration) -> Result<Vec<T::Output>, EngineError> {
        let answers = self.submit(inputs.into_iter().map(Work::Task).collect(), timeout).await?;
        answers
            .into_iter()
            .map(|answer| match answer {
                Answer::Task(output) => Ok(output),
                Answer::Tensors(_) => Err(self.shared.error(|model| EngineError::WorkerLost { model })),
            })
            .collect()
    }

    /// Queues one request of model-level tensors (the model's inputs in order, on the CPU) and waits for the
    /// model's outputs (on the CPU). It joins the same queue and batches as the task's own requests.
    pub async fn infer_tensors(&self, inputs: Vec<Tensor>, timeout: Duration) -> Result<Vec<Tensor>, EngineError> {
        match self.submit(vec![Work::Tensors(inputs)], timeout).await?.pop() {
            Some(Answer::Tensors(outputs)) => Ok(outputs),
            _ => Err(self.shared.error(|model| EngineError::WorkerLost { model })),
        }
    }

    async fn submit(
        &self,
        works: Vec<Work<T::Input>>,
        timeout: Duration,
    ) -> Result<Vec<Answer<T::Output>>, EngineError> {
        let now = Instant::now();
        let deadline = now + timeout;
        let mut answers = Vec::with_capacity(works.len());
        let idle_workers = {
            let mut state = self.shared.lock();
            if state.closed {
                return Err(self.shared.error(|model| EngineError::Stopped { model }));
            }
            let capacity = state.batcher.capacity();
            if works.len() > capacity {
                let entries = works.len();
                return Err(self.shared.error(|model| EngineError::LargerThanQueue { model, entries, capacity }));
            }
            if !state.batcher.has_room_for(works.len()) {
                return Err(self.shared.queue_full(state.batcher.capacity()));
            }
            for work in works {
                let (reply, answer) = oneshot::channel();
                answers.push(answer);
                // Cannot fail: the room for every job was checked under this same lock.
                let job = Job { work, deadline, enqueued_at: now, reply, trace: JobTrace::start() };
                let _ = state.batcher.push(job, now);
            }
            self.shared.metrics.queue_depth.set(state.batcher.len() as i64);
            let wake = answers.len().min(state.idle.len());
            let split = state.idle.len() - wake;
            state.idle.split_off(split)
        };
        // With no idle worker, a busy one takes the jobs when it finishes its batch.
        for index in idle_workers {
            self.shared.wakers[index].notify_one();
        }
        let all = futures_util::future::join_all(answers);
        match tokio::time::timeout_at(deadline.into(), all).await {
            Ok(results) => results
                .into_iter()
                .map(|result| {
                    result.unwrap_or_else(|_| Err(self.shared.error(|model| EngineError::WorkerLost { model })))
                })
                .collect(),
            // Dropping the answers here marks the jobs abandoned, so a worker skips them.
            Err(_) => Err(self.shared.error(|model| EngineError::DeadlineExceeded { model, timeout })),
        }
    }

    /// Fails with `QueueFull` when the queue has no room now. Lets a handler refuse with 429 before spending CPU
    /// on decoding a request that `infer` would refuse anyway (`infer` still checks, so a race costs only that decoding).
    pub fn check_room(&self) -> Result<(), EngineError> {
        let state = self.shared.lock();
        if !state.batcher.has_room_for(1) {
            Err(self.shared.queue_full(state.batcher.capacity()))
        } else {
            Ok(())
        }
    }

    /// Stops taking requests, lets the workers finish everything already queued, and joins them.
    pub fn shutdown(&self) {
        self.shared.close();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for thread in threads {
            let _ = thread.join();
        }
    }

    pub fn spec(&self) -> &WorkerSpec {
        &self.shared.spec
    }

    pub fn task(&self) -> &T {
        &self.shared.task
    }
}

impl<T: BatchTask> Drop for WorkerPool<T> {
    fn drop(&mut self) {
        // Without an explicit shutdown, still let the threads drain the queue and exit; the server joins them
        // when it shuts down.
        self.shared.close();
        super::retired::keep(std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner)));
    }
}

fn worker_main<T: BatchTask>(shared: &Shared<T>, index: usize, model: &InferenceModule) {
    // Gradients are never needed for serving; grad mode is per thread in libtorch.
    let _no_grad = tch::no_grad_guard();
    let (own, borrowed) = thread_counts(&shared.spec);
    tch::set_num_threads(own);
    let mut threads = own;
    while let Some((batch, alone)) = next_batch(shared, index) {
        let wanted = if alone { borrowed } else { own };
        if wanted != threads {
            tch::set_num_threads(wanted);
            threads = wanted;
        }
        run_batch(shared, model, batch);
        shared.lock().busy -= 1;
    }
}

/// Intra-op threads of a worker: its own, and what it runs with when it is alone (the other workers idle and
/// nothing queued) and may borrow theirs. Borrowing cuts latency at low load (MobileNetV2 at concurrency 1:
/// p50 about 37 -> 31 ms on 2 cores); under load every worker runs with its own threads.
fn thread_counts(spec: &WorkerSpec) -> (i32, i32) {
    let own = spec.sizing.intra_op_threads as i32;
    let borrowed = if spec.batching.borrow_idle_threads { own * spec.sizing.workers as i32 } else { own };
    (own, borrowed)
}

fn load_and_warm_up<T: BatchTask>(shared: &Shared<T>) -> Result<InferenceModule, String> {
    let _no_grad = tch::no_grad_guard();
    let spec = &shared.spec;
    let started = Instant::now();
    let model = spec.load_module()?;
    // Every batch size the batcher can produce gets a pass, so that no request pays for first-use setup
    // (allocations, oneDNN primitive creation) of its shape; for tasks without one shape, batch size 1.
    let largest = if shared.task.fixed_input_shape() { spec.batching.max_batch_size.min(16) } else { 1 };
    let sizes = 1..=largest;
    let (own, borrowed) = thread_counts(spec);
    let mut thread_settings = vec![borrowed, own]; // ending on `own`, the setting the worker starts with
    thread_settings.dedup();
    for threads in thread_settings {
        tch::set_num_threads(threads);
        for _ in 0..spec.batching.warmup_runs {
            for size in sizes.clone() {
                warm_up_once(shared, &model, size).map_err(|e| format!("warm-up at batch size {size}: {e}"))?;
            }
        }
    }
    shared.metrics.load_duration.observe(started.elapsed().as_secs_f64());
    tracing::info!(model = %spec.model, optimized = model.is_optimized(), seconds = started.elapsed().as_secs_f64(), "model loaded and warmed up");
    Ok(model)
}

fn warm_up_once<T: BatchTask>(shared: &Shared<T>, model: &InferenceModule, size: usize) -> Result<(), String> {
    let inputs = (0..size).map(|_| shared.task.warmup_input()).collect();
    let outputs =
        run_guarded(shared, model, inputs).map_err(|e| format!("failed: {}", torch_error_summary(&e.to_string())))?;
    check_outputs(shared, size, &outputs)
}

fn check_outputs<T: BatchTask>(shared: &Shared<T>, expected: usize, outputs: &[T::Output]) -> Result<(), String> {
    if outputs.len() != expected {
        return Err(format!("the model returned {} outputs for {expected} inputs", outputs.len()));
    }
    outputs.iter().try_for_each(|output| shared.task.check_output(output))
}

/// Blocks until there is a batch to run; `None` once the pool is closed and its queue drained.
fn next_batch<T: BatchTask>(shared: &Shared<T>, index: usize) -> Option<(Vec<Job<T>>, bool)> {
    let mut state = shared.lock();
    loop {
        let now = Instant::now();
        for job in state.batcher.remove_where(|job| job.abandoned() || job.deadline <= now) {
            let timeout = job.deadline.saturating_duration_since(job.enqueued_at);
            let _ = job.reply.send(Err(shared.error(|model| EngineError::DeadlineExceeded { model, timeout })));
        }
        // Once closed, partial batches run at once: nothing more will join them.
        let policy =
            if state.closed { BatchPolicy { max_delay: Duration::ZERO, ..shared.policy } } else { shared.policy };
        match state.batcher.next_batch(policy, now) {
            Next::Run(batch) => {
                shared.metrics.queue_depth.set(state.batcher.len() as i64);
                state.busy += 1;
                let alone = state.busy == 1 && state.batcher.is_empty();
                return Some((batch, alone));
            }
            Next::Empty if state.closed => return None,
            Next::Empty => state = shared.wait(state, index, None),
            Next::WaitUntil(due) => state = shared.wait(state, index, Some(due.saturating_duration_since(now))),
        }
    }
}

fn run_batch<T: BatchTask>(shared: &Shared<T>, model: &InferenceModule, batch: Vec<Job<T>>) {
    let started = Instant::now();
    let size = batch.len();
    shared.metrics.batch_size.observe(size as f64);
    let (mut task_replies, mut task_inputs) = (Vec::new(), Vec::new());
    let (mut tensor_replies, mut tensor_inputs) = (Vec::new(), Vec::new());
    // Each request's `batch_forward` span ends when the batch has run.
    let mut forwards = Vec::with_capacity(size);
    for job in batch {
        forwards.push(job.trace.forward(size));
        shared.metrics.queue_duration.observe(started.duration_since(job.enqueued_at).as_secs_f64());
        match job.work {
            Work::Task(input) => {
                task_inputs.push(input);
                task_replies.push(job.reply);
            }
            Work::Tensors(inputs) => {
                tensor_inputs.push(inputs);
                tensor_replies.push(job.reply);
            }
        }
    }
    if !task_inputs.is_empty() {
        run_task_batch(shared, model, task_replies, task_inputs);
    }
    if !tensor_inputs.is_empty() {
        run_tensor_batch(shared, model, tensor_replies, tensor_inputs);
    }
    shared.metrics.inference_duration.observe(started.elapsed().as_secs_f64());
    drop(forwards);
}

/// The task's own requests: one `run_batch` of the task.
fn run_task_batch<T: BatchTask>(
    shared: &Shared<T>,
    model: &InferenceModule,
    replies: Vec<Reply<T::Output>>,
    inputs: Vec<T::Input>,
) {
    let size = inputs.len();
    // A libtorch error or a panic fails this batch only; the worker keeps serving.
    match run_guarded(shared, model, inputs) {
        Ok(outputs) if outputs.len() == size => {
            for (reply, output) in replies.into_iter().zip(outputs) {
                let _ = reply.send(Ok(Answer::Task(output)));
            }
        }
        Ok(outputs) => {
            fail_all(shared, replies, format!("the model returned {} outputs for a batch of {size}", outputs.len()))
        }
        Err(e) => fail_all(shared, replies, torch_error_summary(&e.to_string())),
    }
}

/// The task's `run_batch`, with a panic in it turned into an error: task code fails its own batch (or, at
/// warm-up, its own load), never the thread that runs it.
fn run_guarded<T: BatchTask>(
    shared: &Shared<T>,
    model: &InferenceModule,
    inputs: Vec<T::Input>,
) -> anyhow::Result<Vec<T::Output>> {
    catch_panic(|| shared.task.run_batch(model, shared.spec.device, inputs)).unwrap_or_else(|e| Err(anyhow::anyhow!(e)))
}

/// Requests of model-level tensors: the model may refuse one request's tensors (its shapes, its values), which
/// fails that request alone, as the caller's mistake.
fn run_tensor_batch<T: BatchTask>(
    shared: &Shared<T>,
    model: &InferenceModule,
    replies: Vec<Reply<T::Output>>,
    inputs: Vec<Vec<Tensor>>,
) {
    match catch_panic(|| super::forward_batched(model, shared.spec.device, inputs)) {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                let answer = result
                    .map(Answer::Tensors)
                    .map_err(|message| shared.error(|model| EngineError::Rejected { model, message }));
                let _ = reply.send(answer);
            }
        }
        Err(panic) => fail_all(shared, replies, panic),
    }
}

fn fail_all<T: BatchTask>(shared: &Shared<T>, replies: Vec<Reply<T::Output>>, message: String) {
    tracing::error!(model = %shared.spec.model, batch = replies.len(), error = %message, "batch failed");
    for reply in replies {
        let _ = reply.send(Err(shared.error(|model| EngineError::Inference { model, message: message.clone() })));
    }
}
