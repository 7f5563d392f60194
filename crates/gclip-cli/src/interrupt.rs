//! Ctrl-C (SIGINT) and SIGTERM during a long command.
//!
//! The first signal only raises a flag, which the command polls at a point where stopping is
//! safe (`gclip train`: after the current step, then it writes a checkpoint). A second signal
//! ends the process at once; whatever the command writes must then already be crash-safe
//! (checkpoints are: they are written to a temporary directory, synced and renamed).

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

/// The exit status of a command stopped by `signal`: 128 + its number, as shells report it
/// (130 for Ctrl-C, 143 for SIGTERM).
pub fn exit_status(signal: i32) -> u8 {
    u8::try_from(128 + signal).unwrap_or(1)
}

/// Watches SIGINT and SIGTERM from the moment it is installed.
pub struct Interrupt {
    /// The first signal received, 0 while none.
    signal: Arc<AtomicI32>,
}

impl Interrupt {
    /// Starts watching. `first` is told about the first signal (its number), from the
    /// watching thread; a second signal prints `second` and exits with 128 + its number.
    #[cfg(unix)]
    pub fn install(
        first: impl Fn(i32) + Send + 'static,
        second: &'static str,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals =
            signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).context("watching Ctrl-C")?;
        let signal = Arc::new(AtomicI32::new(0));
        let seen = Arc::clone(&signal);
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    if seen
                        .compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                    {
                        first(sig);
                    } else {
                        eprintln!("{second}");
                        std::process::exit(i32::from(exit_status(sig)));
                    }
                }
            })
            .context("starting the signal thread")?;
        Ok(Self { signal })
    }

    /// Without Unix signals, Ctrl-C keeps its default effect (the process ends at once).
    #[cfg(not(unix))]
    pub fn install(
        _first: impl Fn(i32) + Send + 'static,
        _second: &'static str,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            signal: Arc::new(AtomicI32::new(0)),
        })
    }

    /// The first signal received, if any.
    pub fn received(&self) -> Option<i32> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_follows_the_shell_convention() {
        assert_eq!(exit_status(2), 130);
        assert_eq!(exit_status(15), 143);
        assert_eq!(exit_status(1000), 1);
    }
}
