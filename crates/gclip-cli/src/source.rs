//! `--model`: resolving it, with download progress bars on a terminal.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use gclip::hub::{DownloadProgress, Hub};
use gclip::source::ModelSource;

/// Help text shared by every sub-command's `--model`.
pub const MODEL_HELP: &str = "Model: a Hugging Face model id (ORG/NAME[@REVISION], downloaded \
into the Hugging Face cache on first use), a model directory, or an open_clip checkpoint file \
with --arch";

/// Resolves a `--model` value, downloading a hub model into the cache when needed; honours
/// HF_HOME / HF_HUB_CACHE, HF_HUB_OFFLINE, HF_ENDPOINT and HF_TOKEN.
pub fn resolve(model: &str, arch: Option<&str>) -> Result<ModelSource> {
    let mut hub = Hub::from_env();
    if std::io::stderr().is_terminal() {
        hub = hub.with_progress(Arc::new(Bars::default()));
    }
    Ok(ModelSource::resolve_with(model, arch, &hub)?)
}

/// One byte-counting bar per file being downloaded.
#[derive(Default)]
struct Bars(Mutex<Option<indicatif::ProgressBar>>);

impl DownloadProgress for Bars {
    fn start(&self, repo: &str, file: &str, total: u64) {
        let bar = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} {bar:30} {bytes}/{total_bytes} [{bytes_per_sec}, {eta}]",
        ) {
            bar.set_style(style);
        }
        bar.set_message(format!("downloading {repo}/{file}"));
        if let Ok(mut b) = self.0.lock() {
            *b = Some(bar);
        }
    }

    fn advance(&self, bytes: u64) {
        if let Ok(b) = self.0.lock() {
            if let Some(b) = b.as_ref() {
                b.set_position(bytes);
            }
        }
    }

    fn finish(&self) {
        if let Ok(mut b) = self.0.lock() {
            if let Some(b) = b.take() {
                b.finish_and_clear();
            }
        }
    }
}
