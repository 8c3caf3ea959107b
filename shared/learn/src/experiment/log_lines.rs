//! Progress as periodic log lines, for output that is not a terminal (CI logs, `kubectl logs`,
//! a researcher's `nohup`): a line when a step starts, one every `every` while it runs, and one
//! with its wall time when it ends. A bar redrawn in place would be unreadable there.

use super::Progress;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The step now running.
#[derive(Debug)]
struct Step {
    stage: String,
    total: u64,
    done: u64,
    started: Instant,
    last_line: Instant,
}

/// Writes progress lines to stderr.
#[derive(Debug)]
pub struct LogLines {
    every: Duration,
    step: Mutex<Option<Step>>,
}

impl LogLines {
    /// A line every `every` while a step runs.
    pub fn new(every: Duration) -> LogLines {
        LogLines { every, step: Mutex::new(None) }
    }

    fn line(step: &Step, what: &str) -> String {
        let secs = step.started.elapsed().as_secs_f64();
        let pct = if step.total > 0 { format!(" ({:.0}%)", 100.0 * step.done as f64 / step.total as f64) } else { String::new() };
        format!("{}: {what} {}/{}{pct} after {secs:.1} s", step.stage, step.done, step.total)
    }
}

impl Default for LogLines {
    fn default() -> Self {
        LogLines::new(Duration::from_secs(10))
    }
}

impl Progress for LogLines {
    fn start(&self, stage: &str, total: u64) {
        let mut cur = self.step.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(prev) = cur.take() {
            eprintln!("{}", Self::line(&prev, "done"));
        }
        eprintln!("{stage}: started ({total} to do)");
        let now = Instant::now();
        *cur = Some(Step { stage: stage.to_string(), total, done: 0, started: now, last_line: now });
    }

    fn advance(&self, n: u64) {
        let mut cur = self.step.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(step) = cur.as_mut() {
            step.done += n;
            if step.last_line.elapsed() >= self.every {
                step.last_line = Instant::now();
                eprintln!("{}", Self::line(step, "at"));
            }
        }
    }

    fn finish(&self) {
        if let Some(step) = self.step.lock().unwrap_or_else(|e| e.into_inner()).take() {
            eprintln!("{}", Self::line(&step, "done"));
        }
    }

    fn message(&self, msg: &str) {
        eprintln!("{msg}");
    }
}
