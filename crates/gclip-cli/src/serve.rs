//! `gclip serve`: the HTTP API and web page over collections.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use gclip_server::{AppState, BatchConfig, ServerConfig};

#[derive(Args)]
#[command(after_help = "Examples:
  gclip serve --collection photos                    # http://127.0.0.1:8080/
  gclip serve --collection photos --collection shop --root ./collections --api-key \"$KEY\"
API: see GET /api/openapi.json. Writes need the key when one is set.")]
pub struct ServeArgs {
    /// Collection directory to serve (repeat for several; named by their folder name).
    #[arg(long = "collection")]
    collections: Vec<PathBuf>,
    /// Folder for collections created through the API (its collections are served too).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Address to listen on. Anything but loopback exposes the collections to the network.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// API key required for writes (also read from GCLIP_API_KEY).
    #[arg(long, env = "GCLIP_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Require the API key for reads too.
    #[arg(long, requires = "api_key")]
    protect_reads: bool,
    /// Largest request body in MiB (images are sent in the body).
    #[arg(long, default_value_t = 16)]
    max_body_mib: usize,
    /// Largest image accepted, in megapixels.
    #[arg(long, default_value_t = 40)]
    max_image_mpixels: u64,
    /// Most texts or images in one model batch.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// How long a request waits for others to join its batch, in milliseconds.
    #[arg(long, default_value_t = 2)]
    batch_wait_ms: u64,
}

pub fn run(args: ServeArgs) -> Result<()> {
    if args.collections.is_empty() && args.root.is_none() {
        bail!("give --collection DIR (one or more) or --root DIR");
    }
    if !args.addr.ip().is_loopback() && args.api_key.is_none() {
        eprintln!(
            "warning: listening on {} without --api-key: anyone who can reach it can write",
            args.addr
        );
    }
    if let Some(root) = &args.root {
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    }
    let config = ServerConfig {
        addr: args.addr,
        collections: args.collections,
        root: args.root,
        api_key: args.api_key,
        protect_reads: args.protect_reads,
        max_body_bytes: args.max_body_mib.max(1) * 1024 * 1024,
        max_results: 1000,
        batch: BatchConfig {
            max_batch: args.max_batch.max(1),
            max_wait: Duration::from_millis(args.batch_wait_ms),
            max_image_pixels: args.max_image_mpixels.max(1) * 1_000_000,
        },
    };
    let state = AppState::new(config.clone())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("binding {}", config.addr))?;
        let addr = listener.local_addr()?;
        eprintln!("gclip serving on http://{addr}/ (API: http://{addr}/api/openapi.json)");
        gclip_server::serve(state, listener, gclip_server::shutdown_signal()).await?;
        eprintln!("stopped; indexes saved");
        anyhow::Ok(())
    })
}
