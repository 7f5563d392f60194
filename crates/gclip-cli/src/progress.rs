//! A progress bar on a terminal, nothing when stderr is piped.

use std::io::IsTerminal;

pub struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    pub fn new(total: u64, what: &str) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self(None);
        }
        let bar = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} {bar:40} {pos}/{len} [{elapsed_precise}, {per_sec}]",
        ) {
            bar.set_style(style);
        }
        bar.set_message(what.to_string());
        Self(Some(bar))
    }

    pub fn set(&self, done: u64) {
        if let Some(b) = &self.0 {
            b.set_position(done);
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}
