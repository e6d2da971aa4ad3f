//! The training loop every task shares: shuffled batches, the learning-rate schedule, an optimiser step, progress,
//! validation after each epoch, keeping the best epoch's model, early stopping, the time limit and cancellation.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tch::nn::Optimizer;
use tch::Tensor;

use super::data::shuffled;
use super::model::TrainableModel;
use super::progress::{Evaluation, Progress, Snapshot};
use super::settings::{Schedule, TrainSettings};
use super::TrainError;

/// What a task trains: its loss on a batch of training examples, and its validation measure.
pub trait Objective {
    fn train_examples(&self) -> usize;
    /// The mean loss of the training examples at `batch` (the model is in train mode; gradients flow).
    fn loss(&mut self, model: &TrainableModel, batch: &[usize]) -> Result<Tensor, TrainError>;
    /// The validation measure (the model is in eval mode, under no_grad).
    fn validate(&mut self, model: &TrainableModel) -> Result<Evaluation, TrainError>;
}

/// Set from another thread (Ctrl-C, `DELETE /admin/jobs/{id}`) to stop a run at its next step.
#[derive(Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst)
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopReason {
    Completed,
    EarlyStopping,
    TimeLimit,
}

#[derive(Debug, Clone, Serialize)]
pub struct Fitted {
    /// The validation measure before any training step.
    pub before: Evaluation,
    /// One per epoch run (the last may be a partial epoch cut by the time limit).
    pub history: Vec<Evaluation>,
    /// 1-based epoch whose model was kept.
    pub best_epoch: usize,
    pub best: Evaluation,
    pub stopped: StopReason,
    pub steps: usize,
    pub training_seconds: f64,
}

/// Trains `model` with `objective`; writes the best validated model to `best_path`.
pub fn fit(
    model: &mut TrainableModel,
    optimizer: &mut Optimizer,
    objective: &mut dyn Objective,
    settings: &TrainSettings,
    progress: &dyn Progress,
    cancel: &Cancel,
    best_path: &Path,
) -> Result<Fitted, TrainError> {
    let examples = objective.train_examples();
    let steps_per_epoch = batches(examples, settings.batch_size).len();
    if steps_per_epoch == 0 {
        return Err(TrainError::Dataset(format!("{examples} training example(s) are too few for one batch")));
    }
    let total_steps = steps_per_epoch * settings.epochs;
    let time_limit = settings.time_limit_minutes.map(|m| Duration::from_secs_f64(m * 60.0));
    let before = validate(model, objective)?;
    let mut snapshot = Snapshot { epochs: settings.epochs, steps_per_epoch, ..Snapshot::default() };
    let (mut best, mut best_epoch, mut stopped) = (None::<Evaluation>, 0, StopReason::Completed);
    let started = Instant::now();
    let mut step = 0;
    model.set_train(true);
    'epochs: for epoch in 1..=settings.epochs {
        snapshot.epoch = epoch;
        let order = shuffled(examples, settings.seed.wrapping_add(epoch as u64));
        let (mut loss_sum, mut seen) = (0.0, 0);
        for (i, range) in batches(examples, settings.batch_size).into_iter().enumerate() {
            if cancel.is_cancelled() {
                return Err(TrainError::Cancelled);
            }
            if time_limit.is_some_and(|limit| started.elapsed() >= limit) {
                stopped = StopReason::TimeLimit;
                if seen == 0 {
                    break 'epochs; // nothing trained since the last validation
                }
                break;
            }
            optimizer.set_lr(settings.learning_rate() * schedule_factor(settings, step, total_steps, steps_per_epoch));
            let loss = objective.loss(model, &order[range.clone()])?;
            optimizer.backward_step(&loss);
            let value = loss.double_value(&[]);
            if !value.is_finite() {
                return Err(TrainError::Diverged(format!(
                    "the training loss became {value} at epoch {epoch}, step {}: lower the learning rate",
                    i + 1
                )));
            }
            step += 1;
            loss_sum += value * range.len() as f64;
            seen += range.len();
            let elapsed = started.elapsed().as_secs_f64();
            snapshot.step = i + 1;
            snapshot.loss = loss_sum / seen as f64;
            snapshot.examples_per_second = (step * settings.batch_size) as f64 / elapsed.max(1e-9);
            snapshot.eta_seconds = elapsed / step as f64 * (total_steps - step) as f64;
            progress.step(&snapshot);
        }
        let evaluation = validate(model, objective)?;
        model.set_train(true);
        snapshot.validation.push(evaluation);
        progress.epoch(&snapshot);
        if best.is_none_or(|b| evaluation.score() > b.score()) {
            best = Some(evaluation);
            best_epoch = epoch;
            model.save(best_path)?;
        }
        if stopped == StopReason::TimeLimit {
            progress.note(&format!("time limit reached during epoch {epoch}: stopping"));
            break;
        }
        if settings.patience.is_some_and(|patience| epoch - best_epoch >= patience) {
            stopped = StopReason::EarlyStopping;
            progress.note(&format!("no improvement for {} epoch(s): stopping early", epoch - best_epoch));
            break;
        }
    }
    let best = best.ok_or_else(|| TrainError::Dataset("the time limit ran out before the first step".into()))?;
    Ok(Fitted {
        before,
        history: snapshot.validation,
        best_epoch,
        best,
        stopped,
        steps: step,
        training_seconds: started.elapsed().as_secs_f64(),
    })
}

fn validate(model: &mut TrainableModel, objective: &mut dyn Objective) -> Result<Evaluation, TrainError> {
    model.set_train(false);
    tch::no_grad(|| objective.validate(model))
}

/// Batch ranges over `n` shuffled examples. A last batch of one is dropped: batch norm cannot train on it.
fn batches(n: usize, size: usize) -> Vec<std::ops::Range<usize>> {
    (0..n).step_by(size).map(|start| start..(start + size).min(n)).filter(|r| r.len() > 1 || n == 1).collect()
}

/// The learning rate at `step` of `total`, relative to the peak.
fn schedule_factor(settings: &TrainSettings, step: usize, total: usize, steps_per_epoch: usize) -> f64 {
    match settings.schedule {
        Schedule::Constant => 1.0,
        Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / total.max(1) as f64).cos()),
        Schedule::Step => {
            let last_third_from = settings.epochs - settings.epochs / 3;
            if step / steps_per_epoch.max(1) >= last_third_from && settings.epochs >= 3 {
                0.1
            } else {
                1.0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_every_example_and_drop_a_lone_last_one() {
        assert_eq!(batches(10, 4), vec![0..4, 4..8, 8..10]);
        assert_eq!(batches(9, 4), vec![0..4, 4..8]);
        assert_eq!(batches(3, 32), vec![0..3]);
    }

    #[test]
    fn schedules() {
        let cosine = TrainSettings::default();
        assert_eq!(schedule_factor(&cosine, 0, 100, 10), 1.0);
        assert!((schedule_factor(&cosine, 50, 100, 10) - 0.5).abs() < 1e-12);
        let step = TrainSettings { schedule: Schedule::Step, epochs: 3, ..TrainSettings::default() };
        assert_eq!(schedule_factor(&step, 19, 30, 10), 1.0);
        assert_eq!(schedule_factor(&step, 20, 30, 10), 0.1);
    }
}
