//! `gclip serve`: the HTTP API and web page over collections.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use gclip::model::Precision;
use gclip_server::{AppState, BatchConfig, ServerConfig};

#[derive(Args)]
#[command(after_help = "Examples:
  gclip serve --collection photos                    # http://127.0.0.1:8080/
  gclip serve --collection photos --collection shop --root ./collections --api-key \"$KEY\"
API: see GET /api/openapi.json. Writes need the key when one is set.")]
pub struct ServeArgs {
    /// Collection directory to serve (repeat for several; named by their folder name), or
    /// milvus://HOST:PORT/NAME (named NAME).
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
    /// Largest image accepted, in megapixels (default: GCLIP_MAX_IMAGE_PIXELS, else 40, the
    /// limit the CLI uses too).
    #[arg(long)]
    max_image_mpixels: Option<u64>,
    /// Most texts or images in one model batch.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// How long a request waits for others to join its batch, in milliseconds.
    #[arg(long, default_value_t = 2)]
    batch_wait_ms: u64,
    /// Fetch the image URLs that clients send (documents' image fields, `image_url` queries).
    /// Off by default: images already in the image cache are still used. When on, only public
    /// addresses are fetched (checked after DNS resolution and after every redirect), without a
    /// proxy, and every refused or failed fetch gets the same answer.
    #[arg(long)]
    allow_url_fetch: bool,
    /// Fetch only from this host (repeatable; needs --allow-url-fetch).
    #[arg(
        long = "url-allow-host",
        value_name = "HOST",
        requires = "allow_url_fetch"
    )]
    url_allow_hosts: Vec<String>,
    /// Also fetch from loopback and private addresses (a server inside a trusted network
    /// fetching from its intranet; needs --allow-url-fetch).
    #[arg(long, requires = "allow_url_fetch")]
    url_allow_private: bool,
    /// Folder whose image files clients may name in documents (repeatable). Folders that
    /// `gclip index`/`gclip add` indexed are recorded with their collection and need no flag.
    #[arg(long = "files-root", value_name = "DIR")]
    files_roots: Vec<PathBuf>,
    /// The URL clients use to reach the server when it is not its IP address (a DNS name,
    /// a reverse proxy): a server without --api-key answers only to its IP address,
    /// localhost and this URL's host.
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
    /// Longest time, in seconds, a request waits for an image decoding slot or the model
    /// before it is answered 503.
    #[arg(long, default_value_t = 30)]
    deadline_s: u64,
    /// Run every model in this precision (fp32, bf16, int8). Default: each collection's model
    /// in the precision its vectors were made with.
    #[arg(long)]
    precision: Option<Precision>,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let fetch = gclip_server::client_url_fetching(
        args.allow_url_fetch,
        args.url_allow_hosts,
        args.url_allow_private,
    );
    if !gclip_search::remote::RemoteImages::init_shared(fetch) {
        bail!("the image fetcher was set up before the server's URL policy could apply");
    }
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
        files_roots: args.files_roots,
        public_url: args.public_url,
        precision: args.precision,
        batch: BatchConfig {
            max_batch: args.max_batch.max(1),
            max_wait: Duration::from_millis(args.batch_wait_ms),
            max_image_pixels: args
                .max_image_mpixels
                .map_or_else(gclip::input::image::max_image_pixels, |m| {
                    m.max(1) * 1_000_000
                }),
            deadline: Duration::from_secs(args.deadline_s.max(1)),
            ..BatchConfig::default()
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

#[derive(Args)]
#[command(after_help = "Examples:
  gclip serve-bench --arch ViT-B-32 --random          # random weights, built-in tokenizer
  gclip serve-bench --model ./clip-vit-base-patch32 --clients 16 --seconds 20")]
pub struct ServeBenchArgs {
    /// Model (a directory, or a checkpoint with --arch); or --random with --arch.
    #[arg(long)]
    model: Option<String>,
    /// open_clip architecture name or config JSON.
    #[arg(long)]
    arch: Option<String>,
    /// Random weights for --arch (timing only).
    #[arg(long, requires = "arch", conflicts_with = "model")]
    random: bool,
    /// Precision of the model (fp32, bf16, int8).
    #[arg(long, default_value = "fp32")]
    precision: Precision,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Seconds of load (the engine measurement takes half as long).
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Engine batch size and the server's largest batch.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Server batching wait in milliseconds.
    #[arg(long, default_value_t = 2)]
    batch_wait_ms: u64,
    /// Then measure the searches again while this many threads send the attack set (oversized
    /// texts and templates, deep filters, server paths, internal URLs, a 6300×6300 16-bit PNG).
    #[arg(long, default_value_t = 0)]
    attackers: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run_bench(args: ServeBenchArgs) -> Result<()> {
    use candle_core::{DType, Device};
    use gclip::embed::Embedder;
    use gclip::source::ModelSource;
    let embedder = if args.random {
        let arch = args.arch.as_deref().unwrap_or("ViT-B-32");
        let config = gclip::model::ClipConfig::open_clip(arch)?;
        let mut clip = gclip::bench::random_model(&config, &Device::Cpu, DType::F32)?;
        clip.convert(args.precision, Default::default())?;
        Embedder::with_open_clip_inputs(clip)?
    } else {
        let model = args
            .model
            .as_deref()
            .context("give --model (or --random --arch NAME)")?;
        Embedder::load_with(
            &ModelSource::resolve(model, args.arch.as_deref())?,
            &Device::Cpu,
            gclip::embed::LoadOptions {
                precision: args.precision,
                ..Default::default()
            },
        )?
    };
    // As the server packs a model's fp32 weights when it loads it.
    embedder.clip().pack_f32_weights()?;
    let dir = std::env::temp_dir().join(format!("gclip-serve-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let plan = gclip_server::bench::ServerBenchPlan {
        clients: args.clients,
        seconds: args.seconds,
        batch: args.batch,
        max_wait: Duration::from_millis(args.batch_wait_ms),
        documents: 10_000,
        attackers: args.attackers,
    };
    let r = gclip_server::bench::run_server_bench(embedder, &plan, &dir, &|m| eprintln!("{m}"))
        .map_err(anyhow::Error::msg);
    let _ = std::fs::remove_dir_all(&dir);
    let r = r?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "engine {:.1} texts/s (batches of {}); server {:.1} requests/s with {} clients = {:.0} % \
             (p50 {:.1} ms, p99 {:.1} ms, mean batch {:.1}, {} requests, {} errors)",
            r.engine_texts_per_s,
            args.batch,
            r.server_requests_per_s,
            args.clients,
            r.ratio * 100.0,
            r.p50_ms,
            r.p99_ms,
            r.mean_batch,
            r.requests,
            r.errors
        );
        if let Some(a) = &r.under_attack {
            println!(
                "under attack ({} attackers): p50 {:.1} ms, p99 {:.1} ms, {} searches, {} errors",
                args.attackers, a.p50_ms, a.p99_ms, a.requests, a.errors
            );
            for (name, statuses) in &a.attacks {
                let s: Vec<String> = statuses.iter().map(|(c, n)| format!("{c}×{n}")).collect();
                println!("  {name}: {}", s.join(", "));
            }
        }
    }
    Ok(())
}
