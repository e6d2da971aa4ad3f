//! Where a run reports how it goes: a progress bar on a terminal, log lines otherwise, and (for admin jobs) a
//! snapshot the job's status route reads.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Validation measures after an epoch (or of `ember eval`). `accuracy` for classifiers; `loss` is the mean
/// cross-entropy (nats per example, or per byte for text generation), or for style transfer the style distance
/// relative to the unstyled photos'.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Evaluation {
    pub loss: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Style transfer: how well the styled photos keep the photos' composition (1 = perfectly).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub luminance_correlation: Option<f64>,
    pub examples: usize,
}

impl Evaluation {
    /// The number early stopping and "best epoch" follow: accuracy when there is one, else lower loss.
    pub fn score(&self) -> f64 {
        self.accuracy.unwrap_or(-self.loss)
    }
}

/// Where the run is, as of its last step.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    pub epoch: usize,
    pub epochs: usize,
    pub step: usize,
    pub steps_per_epoch: usize,
    /// Mean training loss over the epoch so far.
    pub loss: f64,
    pub examples_per_second: f64,
    pub eta_seconds: f64,
    /// One entry per finished epoch.
    pub validation: Vec<Evaluation>,
}

pub trait Progress: Send + Sync {
    fn step(&self, snapshot: &Snapshot);
    fn epoch(&self, snapshot: &Snapshot);
    /// Anything worth a line: data loaded, early stop, where the result went.
    fn note(&self, message: &str);
}

/// Draws a bar on stderr when it is a terminal (at most 10 times a second), else writes a line every 10 s
/// and after each epoch.
pub struct ConsoleProgress {
    terminal: bool,
    last: std::sync::Mutex<Option<Instant>>,
}

impl Default for ConsoleProgress {
    fn default() -> Self {
        ConsoleProgress { terminal: std::io::stderr().is_terminal(), last: std::sync::Mutex::new(None) }
    }
}

impl ConsoleProgress {
    fn due(&self) -> bool {
        let every = if self.terminal { Duration::from_millis(100) } else { Duration::from_secs(10) };
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() < every) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

impl Progress for ConsoleProgress {
    fn step(&self, s: &Snapshot) {
        if !self.due() {
            return;
        }
        let line = step_line(s);
        if self.terminal {
            let filled = (s.step * 30).checked_div(s.steps_per_epoch).unwrap_or(0);
            eprint!("\r[{}{}] {line}\x1b[K", "#".repeat(filled), " ".repeat(30 - filled.min(30)));
            let _ = std::io::stderr().flush();
        } else {
            eprintln!("{line}");
        }
    }

    fn epoch(&self, s: &Snapshot) {
        if self.terminal {
            eprint!("\r\x1b[K");
        }
        let Some(validation) = s.validation.last() else { return };
        let accuracy = validation.accuracy.map(|a| format!(", accuracy {:.2}%", a * 100.0)).unwrap_or_default()
            + &validation.luminance_correlation.map(|c| format!(", luminance correlation {c:.3}")).unwrap_or_default();
        eprintln!(
            "epoch {}/{}: training loss {:.4}; validation loss {:.4}{accuracy} on {} examples",
            s.epoch, s.epochs, s.loss, validation.loss, validation.examples
        );
    }

    fn note(&self, message: &str) {
        if self.terminal {
            eprint!("\r\x1b[K");
        }
        eprintln!("{message}");
    }
}

fn step_line(s: &Snapshot) -> String {
    format!(
        "epoch {}/{} step {}/{} loss {:.4} {:.1} examples/s ETA {}",
        s.epoch,
        s.epochs,
        s.step,
        s.steps_per_epoch,
        s.loss,
        s.examples_per_second,
        clock(s.eta_seconds)
    )
}

/// `h:mm:ss` or `m:ss`.
fn clock(seconds: f64) -> String {
    let total = seconds.max(0.0).round() as u64;
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_line_names_epoch_step_loss_throughput_and_eta() {
        let s = Snapshot {
            epoch: 2,
            epochs: 3,
            step: 10,
            steps_per_epoch: 40,
            loss: 0.5,
            examples_per_second: 120.0,
            eta_seconds: 3725.0,
            validation: vec![],
        };
        assert_eq!(step_line(&s), "epoch 2/3 step 10/40 loss 0.5000 120.0 examples/s ETA 1:02:05");
    }
}
