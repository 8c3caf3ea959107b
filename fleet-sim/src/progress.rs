//! Progress of long steps on stderr: a bar on a terminal, periodic log lines otherwise (indicatif
//! draws nothing when stderr is not a terminal, and a fleet-sim run in CI or under `nohup` then
//! said nothing for the first minute).

use indicatif::{ProgressBar, ProgressStyle};
use irec_learn::experiment::{LogLines, Progress};
use std::io::IsTerminal;
use std::sync::Mutex;

#[derive(Debug)]
pub struct Bars {
    current: Mutex<Option<ProgressBar>>,
    /// Set when stderr is not a terminal.
    lines: Option<LogLines>,
}

impl Default for Bars {
    fn default() -> Self {
        Bars { current: Mutex::new(None), lines: (!std::io::stderr().is_terminal()).then(LogLines::default) }
    }
}

impl Bars {
    fn with(&self, f: impl FnOnce(&mut Option<ProgressBar>)) {
        let mut guard = self.current.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard);
    }
}

impl Progress for Bars {
    fn start(&self, stage: &str, total: u64) {
        if let Some(l) = &self.lines {
            return l.start(stage, total);
        }
        self.with(|cur| {
            if let Some(bar) = cur.take() {
                bar.finish_and_clear();
            }
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template("{msg:40} [{bar:30}] {pos}/{len} {elapsed_precise} (eta {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(stage.to_string());
            *cur = Some(bar);
        });
    }

    fn advance(&self, n: u64) {
        if let Some(l) = &self.lines {
            return l.advance(n);
        }
        self.with(|cur| {
            if let Some(bar) = cur {
                bar.inc(n);
            }
        });
    }

    fn finish(&self) {
        if let Some(l) = &self.lines {
            return l.finish();
        }
        self.with(|cur| {
            if let Some(bar) = cur.take() {
                bar.finish_and_clear();
            }
        });
    }

    fn message(&self, msg: &str) {
        eprintln!("{msg}");
    }
}
