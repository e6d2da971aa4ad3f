//! Fine-tuning jobs of the admin API. One job trains at a time, on a thread of its own at the lowest CPU priority
//! (nice 19) with bounded intra-op threads, so serving goes on; later jobs wait in a short queue, and beyond it
//! a submission is refused (429). A finished job publishes its version (the registry swaps to it) unless it was
//! asked only to save it.

use std::collections::{BTreeMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::engine::panic_message;
use crate::metrics::Metrics;
use crate::registry::{LoadReason, Registry};
use crate::train::{self, Cancel, DataSource, Progress, Snapshot, TrainError, TrainJob, TrainSettings, Trained};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    const ALL: [JobState; 5] =
        [JobState::Queued, JobState::Running, JobState::Succeeded, JobState::Failed, JobState::Cancelled];

    fn name(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

/// Why the job queue refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error(
        "{waiting} fine-tuning job(s) already wait behind the running one; retry when one finishes (GET /admin/jobs)"
    )]
    QueueFull { waiting: usize },
    #[error("no fine-tuning job {id}")]
    NotFound { id: u64 },
}

impl JobError {
    /// A queued job waits for whole fine-tuning runs: asking again within a minute is pointless.
    pub const RETRY_AFTER_SECS: u64 = 60;
}

/// What `GET /admin/jobs/{id}` answers.
#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    pub id: u64,
    pub model: String,
    pub state: JobState,
    /// Epoch, step, loss, throughput, ETA, and the validation measure of every finished epoch.
    pub progress: Snapshot,
    /// Why it failed.
    pub error: Option<String>,
    /// The version written, once succeeded.
    pub version: Option<u64>,
    /// Once succeeded: the formats of the version it started from, each carried into the new one or not, and why.
    pub formats: Vec<crate::train::formats::FormatNote>,
    /// Whether the version is served (false when the job was asked only to save it).
    pub publish: bool,
    /// Where the version is written, and how servers that share the repository come to serve it: an operator
    /// with replicas reads here that the others follow through their repository watcher, not through this one.
    pub repository: String,
    pub settings: TrainSettings,
    /// Unix seconds.
    pub created_at: f64,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
}

/// A job's data, unpacked into a folder of its own that goes away with the job.
pub struct JobData {
    pub source: DataSource,
    pub folder: tempfile::TempDir,
}

struct Job {
    status: Mutex<JobStatus>,
    cancel: Cancel,
    data: Mutex<Option<JobData>>,
}

impl Job {
    fn status(&self) -> MutexGuard<'_, JobStatus> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Progress for Job {
    fn step(&self, snapshot: &Snapshot) {
        self.status().progress = snapshot.clone();
    }

    fn epoch(&self, snapshot: &Snapshot) {
        self.step(snapshot)
    }

    fn note(&self, message: &str) {
        tracing::info!(job = self.status().id, "{message}");
    }
}

#[derive(Default)]
struct Queue {
    jobs: BTreeMap<u64, Arc<Job>>,
    waiting: VecDeque<Arc<Job>>,
    running: Option<Arc<Job>>,
    next_id: u64,
    /// Set by `Jobs::shutdown`: the runner takes no more jobs and returns.
    stopping: bool,
}

/// What runs a job: `train::train`, or a stand-in in tests.
type Trainer = dyn Fn(&TrainJob, &dyn Progress, &Cancel) -> Result<Trained, TrainError> + Send + Sync;

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    max_waiting: usize,
    trainer: Box<Trainer>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `ember_fine_tune_jobs{state}`: how many jobs are in each state.
    fn count_states(&self, queue: &Queue) {
        for state in JobState::ALL {
            let n = queue.jobs.values().filter(|job| job.status().state == state).count();
            self.metrics.fine_tune_jobs.with_label_values(&[state.name()]).set(n as i64);
        }
    }
}

#[derive(Clone)]
pub struct Jobs {
    shared: Arc<Shared>,
    runner: Arc<Mutex<Option<JoinHandle<()>>>>,
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl Jobs {
    /// Starts the runner thread. `max_waiting` jobs may queue behind the running one.
    pub fn start(registry: Arc<Registry>, metrics: Arc<Metrics>, max_waiting: usize) -> Jobs {
        Jobs::start_with(registry, metrics, max_waiting, Box::new(train::train))
    }

    fn start_with(registry: Arc<Registry>, metrics: Arc<Metrics>, max_waiting: usize, trainer: Box<Trainer>) -> Jobs {
        let shared =
            Arc::new(Shared { queue: Mutex::default(), wake: Condvar::new(), registry, metrics, max_waiting, trainer });
        let runner = Arc::clone(&shared);
        let spawned = std::thread::Builder::new().name("ember-fine-tune".into()).spawn(move || run_jobs(&runner));
        let runner = spawned
            .map_err(|e| tracing::error!(error = %e, "cannot start the fine-tuning thread: jobs will stay queued"))
            .ok();
        Jobs { shared, runner: Arc::new(Mutex::new(runner)) }
    }

    /// Cancels the waiting jobs and the running one, and waits for the runner to stop: the running job stops at
    /// its next step and leaves no version, as a cancelled job does. Blocks. The server calls it when it stops,
    /// so that the process never exits under a training step (libtorch torn down beneath it).
    pub fn shutdown(&self) {
        let mut queue = self.shared.lock();
        queue.stopping = true;
        for job in std::mem::take(&mut queue.waiting) {
            job.cancel.cancel();
            finish(&job, JobState::Cancelled, None);
        }
        if let Some(job) = &queue.running {
            tracing::info!(job = job.status().id, "the server is stopping: cancelling the running fine-tuning job");
            job.cancel.cancel();
        }
        self.shared.count_states(&queue);
        drop(queue);
        self.shared.wake.notify_all();
        let runner = self.runner.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(runner) = runner {
            let _ = runner.join();
        }
    }

    /// Queues a job; refused when `max_waiting` jobs wait already.
    pub fn submit(
        &self,
        model: &str,
        data: JobData,
        settings: TrainSettings,
        publish: bool,
    ) -> Result<JobStatus, JobError> {
        let mut queue = self.shared.lock();
        if queue.waiting.len() >= self.shared.max_waiting {
            return Err(JobError::QueueFull { waiting: queue.waiting.len() });
        }
        queue.next_id += 1;
        let status = JobStatus {
            id: queue.next_id,
            model: model.to_string(),
            state: JobState::Queued,
            progress: Snapshot { epochs: settings.epochs, ..Snapshot::default() },
            error: None,
            version: None,
            formats: Vec::new(),
            repository: format!(
                "{}: the new version is written into this model repository; this server serves it as soon as the \
                 job succeeds, and every other server of the same repository (replicas on a shared volume) at \
                 its next scan of it (--watch-interval-ms; never if it does not watch)",
                self.shared.registry.root().display()
            ),
            publish,
            settings,
            created_at: now(),
            started_at: None,
            finished_at: None,
        };
        let job = Arc::new(Job {
            status: Mutex::new(status.clone()),
            cancel: Cancel::default(),
            data: Mutex::new(Some(data)),
        });
        queue.jobs.insert(status.id, Arc::clone(&job));
        queue.waiting.push_back(job);
        forget_old_jobs(&mut queue);
        self.shared.count_states(&queue);
        drop(queue);
        self.shared.wake.notify_one();
        Ok(status)
    }

    pub fn list(&self) -> Vec<JobStatus> {
        self.shared.lock().jobs.values().map(|job| job.status().clone()).collect()
    }

    pub fn get(&self, id: u64) -> Result<JobStatus, JobError> {
        let queue = self.shared.lock();
        let job = queue.jobs.get(&id).ok_or(JobError::NotFound { id })?;
        let status = job.status().clone();
        Ok(status)
    }

    /// A waiting job is cancelled at once; a running one stops at its next step and leaves no version.
    pub fn cancel(&self, id: u64) -> Result<JobStatus, JobError> {
        let mut queue = self.shared.lock();
        let job = Arc::clone(queue.jobs.get(&id).ok_or(JobError::NotFound { id })?);
        job.cancel.cancel();
        if let Some(position) = queue.waiting.iter().position(|waiting| Arc::ptr_eq(waiting, &job)) {
            queue.waiting.remove(position);
            finish(&job, JobState::Cancelled, None);
            self.shared.count_states(&queue);
        }
        let status = job.status().clone();
        Ok(status)
    }
}

/// Finished jobs kept for GET /admin/jobs; older ones are forgotten, so a long-running server stays small.
const FINISHED_JOBS_KEPT: usize = 100;

fn forget_old_jobs(queue: &mut Queue) {
    let finished: Vec<u64> = queue
        .jobs
        .iter()
        .filter(|(_, job)| matches!(job.status().state, JobState::Succeeded | JobState::Failed | JobState::Cancelled))
        .map(|(id, _)| *id)
        .collect();
    for id in finished.iter().take(finished.len().saturating_sub(FINISHED_JOBS_KEPT)) {
        queue.jobs.remove(id);
    }
}

fn finish(job: &Job, state: JobState, error: Option<String>) {
    job.data.lock().unwrap_or_else(PoisonError::into_inner).take(); // removes the unpacked upload
    let mut status = job.status();
    status.state = state;
    status.error = error;
    status.finished_at = Some(now());
}

fn run_jobs(shared: &Shared) {
    lower_priority();
    loop {
        let job = {
            let mut queue = shared.lock();
            loop {
                if queue.stopping {
                    return;
                }
                if let Some(job) = queue.waiting.pop_front() {
                    queue.running = Some(Arc::clone(&job));
                    break job;
                }
                queue = shared.wake.wait(queue).unwrap_or_else(PoisonError::into_inner);
            }
        };
        {
            let mut status = job.status();
            status.state = JobState::Running;
            status.started_at = Some(now());
        }
        shared.count_states(&shared.lock());
        // A panic (a bug in ember or libtorch's bindings) fails this job only: the runner goes on to the next.
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| run_one(shared, &job)));
        let id = job.status().id;
        match outcome {
            Ok(Ok(trained)) => {
                {
                    let mut status = job.status();
                    status.version = Some(trained.version);
                    status.formats = trained.formats;
                }
                finish(&job, JobState::Succeeded, None);
            }
            Ok(Err(TrainError::Cancelled)) => finish(&job, JobState::Cancelled, None),
            Ok(Err(e)) => {
                tracing::warn!(job = id, error = %e, "fine-tuning job failed");
                finish(&job, JobState::Failed, Some(e.to_string()));
            }
            Err(panic) => {
                let message = panic_message(panic.as_ref());
                tracing::error!(job = id, panic = %message, "fine-tuning job panicked; the runner goes on");
                finish(
                    &job,
                    JobState::Failed,
                    Some(format!("the job stopped on an internal error ({message}); the server log has the details")),
                );
            }
        }
        let mut queue = shared.lock();
        queue.running = None;
        shared.count_states(&queue);
    }
}

fn run_one(shared: &Shared, job: &Job) -> Result<Trained, TrainError> {
    let (model, mut settings, publish, id) = {
        let status = job.status();
        (status.model.clone(), status.settings.clone(), status.publish, status.id)
    };
    // Bounded: a job never takes more than one core unless asked to.
    if settings.threads == 0 {
        settings.threads = 1;
    }
    let source = match job.data.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
        Some(data) => data.source.clone(),
        None => return Err(TrainError::Cancelled),
    };
    let train_job = TrainJob {
        repo: shared.registry.root().to_path_buf(),
        model: model.clone(),
        version: None,
        into: None,
        hold: !publish,
        data: source,
        settings,
        device: tch::Device::Cpu,
    };
    tracing::info!(job = id, model = %model, "fine-tuning job started");
    // Under a memory budget the model stays loaded, and the job's copy is counted, while it trains.
    let hold = shared.registry.hold_for_job(&model);
    let trained = (shared.trainer)(&train_job, job, &job.cancel);
    drop(hold);
    let trained = trained?;
    if publish {
        // The watcher may have swapped already; this makes it happen now when it is off.
        if let Err(e) = shared.registry.reload(&model, false, LoadReason::Swap) {
            tracing::error!(job = id, model = %model, error = %e, "the new version was saved but could not be served");
        }
    }
    tracing::info!(job = id, model = %model, version = trained.version, publish, "fine-tuning job succeeded");
    Ok(trained)
}

/// nice 19 for this thread and the threads it starts (libtorch's), so serving threads always win the CPU.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority on the calling thread's id only changes its scheduling priority.
    unsafe {
        let thread = libc::syscall(libc::SYS_gettid) as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, thread, 19) != 0 {
            tracing::warn!("cannot lower the fine-tuning thread's priority; serving may slow down during jobs");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::repository::Repository;

    fn job_data() -> (JobData, std::path::PathBuf) {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().to_path_buf();
        (JobData { source: DataSource { path: path.clone(), class_names: None }, folder }, path)
    }

    fn wait_for(jobs: &Jobs, id: u64, state: JobState) -> JobStatus {
        // Generous: a panicking job is marked failed after the panic hook has printed its backtrace, which is
        // symbolized from the debug info when RUST_BACKTRACE is set: that took over 10 s on a loaded 2-core machine.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = jobs.get(id).unwrap();
            if status.state == state {
                return status;
            }
            assert!(Instant::now() < deadline, "job {id} is {:?}", status.state);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_panicking_job_fails_alone_and_the_runner_takes_the_next() {
        let root = tempfile::tempdir().unwrap();
        let repository = Repository { root: root.path().to_path_buf(), models: vec![], defaults: Default::default() };
        let metrics = Arc::new(Metrics::new());
        let registry = Arc::new(Registry::new(repository, Default::default(), Arc::clone(&metrics)));
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let trainer: Box<Trainer> = Box::new(move |job: &TrainJob, _: &dyn Progress, _: &Cancel| {
            if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("index out of bounds: the len is 1 but the index is 2");
            }
            Ok(Trained {
                model: job.model.clone(),
                version: 7,
                dir: job.repo.clone(),
                metrics: serde_json::Value::Null,
                formats: vec![],
            })
        });
        let jobs = Jobs::start_with(registry, metrics, 4, trainer);
        let (first, first_folder) = job_data();
        let first = jobs.submit("m", first, TrainSettings::default(), false).unwrap();
        let failed = wait_for(&jobs, first.id, JobState::Failed);
        assert!(failed.error.as_deref().unwrap().contains("index out of bounds"), "{failed:?}");
        assert!(!first_folder.exists(), "the failed job's upload is removed");
        let (second, second_folder) = job_data();
        let second = jobs.submit("m", second, TrainSettings::default(), false).unwrap();
        assert_eq!(wait_for(&jobs, second.id, JobState::Succeeded).version, Some(7));
        assert!(!second_folder.exists());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
