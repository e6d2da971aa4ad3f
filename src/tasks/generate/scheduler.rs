//! Continuous batching for recurrent text generation. One OS thread per model owns the module and every active
//! sequence; each step advances all of them with one batched forward pass, and a request that arrives joins at
//! the next step instead of waiting for the others to finish.
//!
//! The model's interface (see models/export/shakespeare.py): `forward(ids [B, T], state) -> (logits [B, T, V],
//! state)`, where the state's dimension 1 is the batch and an all-zero state (for TorchScript also an empty one)
//! starts new sequences. Each sequence
//! keeps its own state between steps; a step concatenates them along dimension 1 and splits the result.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};
use tokio::sync::{mpsc, oneshot};

use super::admission::{self, PrefillPass, PromptProgress};
use super::{FinishReason, GenerationRequest, Sampler, TextDecoder, VOCABULARY};
use crate::engine::batcher::{BatchPolicy, Batcher, Next};
use crate::engine::{
    catch_panic, forward_batched, load_reporting, retired, signature_check, torch_error_summary, EngineError,
    InferenceModule, WorkerSpec,
};
use crate::metrics::{GenerationMetrics, ModelMetrics};
use crate::model_toml::GenerationConfig;

/// What a sequence's caller receives, in order: tokens, then `Done` or `Error`.
#[derive(Debug)]
pub enum GenerationEvent {
    Token { id: u8, text: String },
    Done { finish_reason: FinishReason, tokens: usize },
    Error(EngineError),
}

struct Pending {
    request: GenerationRequest,
    events: mpsc::UnboundedSender<GenerationEvent>,
    enqueued_at: Instant,
    deadline: Instant,
}

/// One sequence being generated.
struct Sequence {
    events: mpsc::UnboundedSender<GenerationEvent>,
    sampler: Sampler,
    decoder: TextDecoder,
    stop: Vec<Vec<u8>>,
    max_tokens: usize,
    last_token: i64,
    state: Tensor,
    /// Set once the sequence has sent its last event or its caller has gone.
    finished: bool,
}

/// A newcomer whose prompt runs through the model, in one or more chunks (`admission::plan`), before its first
/// token.
struct Prefilling {
    pending: Pending,
    prompt: Vec<i64>,
    progress: PromptProgress,
    /// The model's state after the chunks run so far; `None` before the first.
    state: Option<Tensor>,
    /// The last position's logits, once the whole prompt has run.
    last_logits: Option<Vec<f32>>,
    failed: Option<String>,
}

impl Prefilling {
    fn new(pending: Pending) -> Prefilling {
        let prompt: Vec<i64> = pending.request.prompt.iter().map(|&b| i64::from(b)).collect();
        let progress = PromptProgress { length: prompt.len(), done: 0 };
        Prefilling { pending, prompt, progress, state: None, last_logits: None, failed: None }
    }
}

/// A request of model-level tensors (Open Inference Protocol): one forward pass of its own between steps, since
/// its batch is its own (the state's batch dimension is 1, the sequences' states are the engine's).
struct TensorJob {
    inputs: Vec<Tensor>,
    reply: oneshot::Sender<Result<Vec<Tensor>, EngineError>>,
    enqueued_at: Instant,
    deadline: Instant,
}

struct Queue {
    /// Sequences waiting to join, at most `batching.queue_capacity`.
    waiting: Batcher<Pending>,
    /// Tensor requests waiting for the next step, at most `batching.queue_capacity`.
    tensors: Batcher<TensorJob>,
    closed: bool,
}

struct Shared {
    spec: WorkerSpec,
    limits: GenerationConfig,
    queue: Mutex<Queue>,
    wake: Condvar,
    metrics: ModelMetrics,
    generation: GenerationMetrics,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Never held across a forward pass or user code: a poisoned lock still holds a consistent queue.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn error(&self, make: impl FnOnce(String) -> EngineError) -> EngineError {
        make(self.spec.model.clone())
    }
}

pub struct GenerationEngine {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl GenerationEngine {
    /// Starts the model's thread, which loads and warms up the module. Returns once it is ready, or its load error.
    pub fn start(
        spec: WorkerSpec,
        limits: GenerationConfig,
        metrics: ModelMetrics,
        generation: GenerationMetrics,
    ) -> Result<GenerationEngine, EngineError> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                waiting: Batcher::new(spec.batching.queue_capacity),
                tensors: Batcher::new(spec.batching.queue_capacity),
                closed: false,
            }),
            wake: Condvar::new(),
            spec,
            limits,
            metrics,
            generation,
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread_shared = Arc::clone(&shared);
        let name = format!("ember-{}-gen", shared.spec.model);
        let thread = crate::engine::priority::spawn_serving(name, move || scheduler_main(&thread_shared, ready_tx))
            .map_err(|e| {
                shared.error(|model| EngineError::Load { model, message: format!("cannot start its thread: {e}") })
            })?;
        let engine = GenerationEngine { shared, thread: Mutex::new(Some(thread)) };
        match ready_rx.recv().unwrap_or_else(|_| Err("its thread died while loading".into())) {
            Ok(()) => Ok(engine),
            Err(message) => {
                engine.shutdown();
                Err(engine.shared.error(|model| EngineError::Load { model, message }))
            }
        }
    }

    /// Queues a sequence; its events arrive on the returned receiver. Dropping the receiver cancels the sequence
    /// at its next step. A full queue is refused at once; a sequence that has not joined by `deadline` gets
    /// `DeadlineExceeded`.
    pub fn submit(
        &self,
        request: GenerationRequest,
        deadline: Instant,
    ) -> Result<mpsc::UnboundedReceiver<GenerationEvent>, EngineError> {
        let (events, receiver) = mpsc::unbounded_channel();
        self.enqueue(|queue, now| {
            let pending = Pending { request, events, enqueued_at: now, deadline };
            queue.waiting.push(pending, now).map_err(|_| queue.waiting.capacity())
        })?;
        Ok(receiver)
    }

    /// Runs `push` on the queue at `now` unless the engine is closed, then wakes the scheduler; `push` answers
    /// the capacity of a queue it found full.
    fn enqueue(&self, push: impl FnOnce(&mut Queue, Instant) -> Result<(), usize>) -> Result<(), EngineError> {
        let mut queue = self.shared.lock();
        if queue.closed {
            return Err(self.shared.error(|model| EngineError::Stopped { model }));
        }
        push(&mut queue, Instant::now())
            .map_err(|capacity| EngineError::queue_full(&self.shared.spec.model, capacity))?;
        self.shared.metrics.queue_depth.set((queue.waiting.len() + queue.tensors.len()) as i64);
        drop(queue);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Runs one request of model-level tensors (the model's inputs in order) on the engine's thread, between two
    /// steps of the sequences, and waits for its outputs (on the CPU) for at most `timeout`.
    pub async fn infer_tensors(&self, inputs: Vec<Tensor>, timeout: Duration) -> Result<Vec<Tensor>, EngineError> {
        let (reply, answer) = oneshot::channel();
        let deadline = Instant::now() + timeout;
        self.enqueue(|queue, now| {
            let job = TensorJob { inputs, reply, enqueued_at: now, deadline };
            queue.tensors.push(job, now).map_err(|_| queue.tensors.capacity())
        })?;
        match tokio::time::timeout_at(deadline.into(), answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.shared.error(|model| EngineError::WorkerLost { model })),
            Err(_) => Err(self.shared.error(|model| EngineError::DeadlineExceeded { model, timeout })),
        }
    }

    /// Stops taking sequences, finishes the active and queued ones, and joins the thread.
    pub fn shutdown(&self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = thread.join();
        }
    }

    /// What a request may ask for (model.toml `[generation]`).
    pub fn limits(&self) -> &GenerationConfig {
        &self.shared.limits
    }
}

impl Drop for GenerationEngine {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_all();
        retired::keep(self.thread.lock().unwrap_or_else(PoisonError::into_inner).take());
    }
}

fn scheduler_main(shared: &Shared, ready: std::sync::mpsc::Sender<Result<(), String>>) {
    let _no_grad = tch::no_grad_guard();
    tch::set_num_threads(shared.spec.sizing.intra_op_threads as i32);
    let Some(model) = load_reporting(ready, || load_and_warm_up(shared)) else {
        return;
    };
    let mut active: Vec<Sequence> = Vec::new();
    let mut prefilling: Vec<Prefilling> = Vec::new();
    while let Some((admitted, tensor_jobs)) = next_admissions(shared, active.len(), prefilling.len()) {
        for job in tensor_jobs {
            run_tensor_job(shared, &model, job);
        }
        prefilling.extend(admitted.into_iter().map(Prefilling::new));
        // A caller that left while its prompt ran costs nothing more.
        prefilling.retain(|p| !p.pending.events.is_closed());
        if !prefilling.is_empty() {
            prefill(shared, &model, &mut prefilling);
            active.extend(start_prefilled(shared, &mut prefilling));
        }
        active.retain(|s| !s.finished);
        if !active.is_empty() {
            let started = Instant::now();
            if let Err(message) = guarded_step(shared, &model, &mut active) {
                tracing::error!(model = %shared.spec.model, sequences = active.len(), error = %message, "generation step failed");
                for sequence in active.drain(..) {
                    let error = shared.error(|model| EngineError::Inference { model, message: message.clone() });
                    let _ = sequence.events.send(GenerationEvent::Error(error));
                }
            }
            shared.metrics.inference_duration.observe(started.elapsed().as_secs_f64());
            active.retain(|s| !s.finished);
        }
        shared.generation.active_sequences.set(active.len() as i64);
    }
}

fn run_tensor_job(shared: &Shared, model: &InferenceModule, job: TensorJob) {
    let started = Instant::now();
    shared.metrics.queue_duration.observe(started.duration_since(job.enqueued_at).as_secs_f64());
    let result = catch_panic(|| forward_batched(model, shared.spec.device, vec![job.inputs]).pop())
        .unwrap_or_else(|panic| Some(Err(panic)))
        .unwrap_or_else(|| Err("the request was not run".into()));
    shared.metrics.inference_duration.observe(started.elapsed().as_secs_f64());
    let _ = job.reply.send(result.map_err(|message| shared.error(|model| EngineError::Rejected { model, message })));
}

fn guarded_step(shared: &Shared, model: &InferenceModule, active: &mut [Sequence]) -> Result<(), String> {
    catch_panic(|| step(shared, model, active)).and_then(|stepped| stepped)
}

/// Waits for work: returns the sequences that may join now (none if sequences are active and nobody is waiting)
/// and the tensor requests to run before the next step, or `None` once closed with nothing left to do.
fn next_admissions(shared: &Shared, active: usize, prefilling: usize) -> Option<(Vec<Pending>, Vec<TensorJob>)> {
    // Joining never waits for company: whoever is queued starts prefilling at the next iteration, up to
    // max_batch_size running and prefilling sequences in all.
    let places = admission::free_places(shared.spec.batching.max_batch_size, active, prefilling);
    let policy = BatchPolicy { max_size: places, max_delay: Duration::ZERO };
    let mut queue = shared.lock();
    loop {
        let now = Instant::now();
        // Callers that gave up or timed out before joining are dropped before they cost a forward pass.
        for pending in queue.waiting.remove_where(|p| p.events.is_closed() || p.deadline <= now) {
            let timeout = pending.deadline.saturating_duration_since(pending.enqueued_at);
            let _ = pending
                .events
                .send(GenerationEvent::Error(shared.error(|model| EngineError::DeadlineExceeded { model, timeout })));
        }
        for job in queue.tensors.remove_where(|job| job.reply.is_closed() || job.deadline <= now) {
            let timeout = job.deadline.saturating_duration_since(job.enqueued_at);
            let _ = job.reply.send(Err(shared.error(|model| EngineError::DeadlineExceeded { model, timeout })));
        }
        let tensor_jobs = queue.tensors.remove_where(|_| true);
        let admitted = match policy.max_size {
            0 => Vec::new(), // every slot taken: the queued wait for a sequence to finish
            _ => match queue.waiting.next_batch(policy, now) {
                Next::Run(admitted) => admitted,
                Next::Empty | Next::WaitUntil(_) => Vec::new(),
            },
        };
        if !admitted.is_empty() || active > 0 || prefilling > 0 || !tensor_jobs.is_empty() {
            shared.metrics.queue_depth.set(queue.waiting.len() as i64);
            for pending in &admitted {
                shared.metrics.queue_duration.observe(now.duration_since(pending.enqueued_at).as_secs_f64());
            }
            return Some((admitted, tensor_jobs));
        }
        if queue.closed {
            return None;
        }
        // Idle with nothing queued (anything queued would have joined): sleep until a request arrives.
        queue = shared.wake.wait(queue).unwrap_or_else(PoisonError::into_inner);
    }
}

/// Runs this iteration's share of the prompts (`admission::plan`, within `generation.prefill_budget_tokens`).
/// A pass that fails (a libtorch error, a panic) fails its members only.
fn prefill(shared: &Shared, model: &InferenceModule, prefilling: &mut [Prefilling]) {
    let progress: Vec<PromptProgress> = prefilling.iter().map(|p| p.progress).collect();
    for pass in admission::plan(&progress, shared.limits.prefill_budget_tokens) {
        let started = Instant::now();
        let result = catch_panic(|| prefill_pass(shared, model, prefilling, &pass)).and_then(|passed| passed);
        shared.metrics.inference_duration.observe(started.elapsed().as_secs_f64());
        if let Err(message) = result {
            tracing::error!(model = %shared.spec.model, sequences = pass.members.len(), error = %message, "prefill failed");
            for &member in &pass.members {
                prefilling[member].failed = Some(message.clone());
            }
        }
    }
}

/// One forward pass over a chunk of each member's prompt; the members' states carry to their next chunk.
fn prefill_pass(
    shared: &Shared,
    model: &InferenceModule,
    prefilling: &mut [Prefilling],
    pass: &PrefillPass,
) -> Result<(), String> {
    let device = shared.spec.device;
    let batch = pass.members.len();
    let mut ids = Vec::with_capacity(batch * pass.tokens);
    for &member in &pass.members {
        let Prefilling { prompt, progress, .. } = &prefilling[member];
        ids.extend_from_slice(&prompt[progress.done..progress.done + pass.tokens]);
    }
    let ids = Tensor::from_slice(&ids).view([batch as i64, pass.tokens as i64]).to_device(device);
    let state = if pass.fresh {
        fresh_state(model, batch, device)?
    } else {
        let states: Vec<&Tensor> = pass.members.iter().filter_map(|&m| prefilling[m].state.as_ref()).collect();
        Tensor::f_cat(&states, 1).map_err(|e| torch_error_summary(&e.to_string()))?
    };
    let (logits, state) = run_model(model, &ids, &state, batch)?;
    let states = state.f_split(1, 1).map_err(|e| torch_error_summary(&e.to_string()))?;
    let last = tensor_to_vec(&logits.select(1, -1))?;
    for ((&member, state), row) in pass.members.iter().zip(states).zip(last.chunks(VOCABULARY)) {
        let sequence = &mut prefilling[member];
        sequence.progress.done += pass.tokens;
        sequence.state = Some(state);
        if sequence.progress.finished() {
            sequence.last_logits = Some(row.to_vec());
        }
    }
    Ok(())
}

/// Takes the prefills that are through (or failed) out of `prefilling`: a failed one gets its error, a finished
/// one emits its first token and becomes a running sequence.
fn start_prefilled(shared: &Shared, prefilling: &mut Vec<Prefilling>) -> Vec<Sequence> {
    let mut started = Vec::new();
    let mut still = Vec::with_capacity(prefilling.len());
    for mut prefill in prefilling.drain(..) {
        if let Some(message) = prefill.failed.take() {
            let error = shared.error(|model| EngineError::Inference { model, message });
            let _ = prefill.pending.events.send(GenerationEvent::Error(error));
            continue;
        }
        if !prefill.progress.finished() {
            still.push(prefill);
            continue;
        }
        let (Some(state), Some(logits)) = (prefill.state, prefill.last_logits) else {
            // prefill_pass sets both when the prompt is through: only an empty prompt, which validation refuses,
            // could finish without them; its caller still gets an answer.
            let message = "the prompt is empty: nothing to generate from".to_string();
            let _ = prefill
                .pending
                .events
                .send(GenerationEvent::Error(shared.error(|model| EngineError::Rejected { model, message })));
            continue;
        };
        let Pending { request, events, .. } = prefill.pending;
        let mut sequence = Sequence {
            events,
            sampler: Sampler::new(request.sampling),
            decoder: TextDecoder::default(),
            stop: request.stop,
            max_tokens: request.max_tokens,
            last_token: 0,
            state,
            finished: false,
        };
        advance(shared, &mut sequence, &logits);
        started.push(sequence);
    }
    *prefilling = still;
    started
}

/// One batched forward pass over every active sequence, then one new token each.
fn step(shared: &Shared, model: &InferenceModule, active: &mut [Sequence]) -> Result<(), String> {
    let batch = active.len();
    shared.metrics.batch_size.observe(batch as f64);
    let last: Vec<i64> = active.iter().map(|s| s.last_token).collect();
    let ids = Tensor::from_slice(&last).view([batch as i64, 1]).to_device(shared.spec.device);
    let states: Vec<&Tensor> = active.iter().map(|s| &s.state).collect();
    let state = Tensor::f_cat(&states, 1).map_err(|e| e.to_string())?;
    let (logits, state) = run_model(model, &ids, &state, batch)?;
    let logits = tensor_to_vec(&logits)?;
    let states = state.f_split(1, 1).map_err(|e| e.to_string())?;
    for ((sequence, row), state) in active.iter_mut().zip(logits.chunks(VOCABULARY)).zip(states) {
        sequence.state = state;
        advance(shared, sequence, row);
    }
    Ok(())
}

/// The state that starts `batch` new sequences: zeros in the shape the model declares for its state (an ONNX
/// graph fixes it, `[layers, batch, hidden]`, and a size the graph declares is bounded before it is allocated),
/// or the empty tensor from which a TorchScript model's forward makes its own zeros.
fn fresh_state(model: &InferenceModule, batch: usize, device: Device) -> Result<Tensor, String> {
    let shape = match model.declared_input_shape(1) {
        Some(mut shape) if shape.len() >= 2 && shape.iter().enumerate().all(|(i, &d)| i == 1 || d > 0) => {
            shape[1] = batch as i64;
            signature_check::allocatable("the graph's state input", &shape)?;
            shape
        }
        _ => vec![0],
    };
    Tensor::f_zeros(shape.as_slice(), (Kind::Float, device)).map_err(|e| torch_error_summary(&e.to_string()))
}

/// Checks the model's outputs against the interface: logits `[batch, T, 256]` and a state batched on dimension 1.
fn run_model(model: &InferenceModule, ids: &Tensor, state: &Tensor, batch: usize) -> Result<(Tensor, Tensor), String> {
    let outputs = model.forward(&[ids, state]).map_err(|e| torch_error_summary(&e))?;
    let [logits, state]: [Tensor; 2] = outputs
        .try_into()
        .map_err(|o: Vec<Tensor>| format!("the model returned {} tensors; expected (logits, state)", o.len()))?;
    let (logits_size, state_size) = (logits.size(), state.size());
    let batch = batch as i64;
    if logits_size.len() != 3 || logits_size[0] != batch || logits_size[2] != VOCABULARY as i64 {
        return Err(format!(
            "the model returned logits of shape {logits_size:?}; expected [{batch}, tokens, {VOCABULARY}]"
        ));
    }
    if state_size.len() < 2 || state_size[1] != batch {
        return Err(format!(
            "the model returned a state of shape {state_size:?}; expected the batch ({batch}) in dimension 1"
        ));
    }
    Ok((logits, state))
}

fn tensor_to_vec(tensor: &Tensor) -> Result<Vec<f32>, String> {
    let cpu = tensor.f_to_kind(Kind::Float).and_then(|t| t.f_to_device(Device::Cpu)).map_err(|e| e.to_string())?;
    Vec::<f32>::try_from(cpu.contiguous().view([-1])).map_err(|e| e.to_string())
}

/// Samples a sequence's next token from its logits, sends it, and ends the sequence on a stop sequence,
/// at max_tokens, or when its caller has gone.
fn advance(shared: &Shared, sequence: &mut Sequence, logits: &[f32]) {
    let token = sequence.sampler.sample(logits) as u8;
    sequence.last_token = i64::from(token);
    let text = sequence.decoder.push(token);
    shared.generation.tokens.inc();
    if sequence.events.send(GenerationEvent::Token { id: token, text }).is_err() {
        sequence.finished = true;
        return;
    }
    let finish_reason = if sequence.decoder.ends_with_any(&sequence.stop) {
        Some(FinishReason::Stop)
    } else if sequence.decoder.len() >= sequence.max_tokens {
        Some(FinishReason::Length)
    } else {
        None
    };
    if let Some(finish_reason) = finish_reason {
        let _ = sequence.events.send(GenerationEvent::Done { finish_reason, tokens: sequence.decoder.len() });
        sequence.finished = true;
    }
}

fn load_and_warm_up(shared: &Shared) -> Result<InferenceModule, String> {
    let spec = &shared.spec;
    let started = Instant::now();
    let model = spec.load_module()?;
    // A prefill and a step at every batch size, which also proves the model keeps the interface.
    let fresh = fresh_state(&model, 1, spec.device).map_err(|e| format!("{}: {e}", spec.path.display()))?;
    let prompt = Tensor::from_slice(b"Warm up.".map(i64::from).as_slice()).view([1, -1]).to_device(spec.device);
    for _ in 0..spec.batching.warmup_runs.max(1) {
        let (_, state) = run_model(&model, &prompt, &fresh, 1).map_err(|e| format!("warm-up prefill: {e}"))?;
        for batch in 1..=spec.batching.max_batch_size.min(64) {
            let ids = Tensor::zeros([batch as i64, 1], (Kind::Int64, spec.device));
            let states = Tensor::cat(&vec![&state; batch], 1);
            let _ = run_model(&model, &ids, &states, batch)
                .map_err(|e| format!("warm-up step at batch size {batch}: {e}"))?;
        }
    }
    shared.metrics.load_duration.observe(started.elapsed().as_secs_f64());
    tracing::info!(model = %spec.model, optimized = model.is_optimized(), seconds = started.elapsed().as_secs_f64(), "generation model loaded and warmed up");
    Ok(model)
}
