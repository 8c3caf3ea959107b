//! Progress bars for long steps (on stderr; indicatif hides them when stderr is not a terminal).

use indicatif::{ProgressBar, ProgressStyle};
use irec_learn::experiment::Progress;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Bars {
    current: Mutex<Option<ProgressBar>>,
}

impl Bars {
    fn with(&self, f: impl FnOnce(&mut Option<ProgressBar>)) {
        let mut guard = self.current.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard);
    }
}

impl Progress for Bars {
    fn start(&self, stage: &str, total: u64) {
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
        self.with(|cur| {
            if let Some(bar) = cur {
                bar.inc(n);
            }
        });
    }

    fn finish(&self) {
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
