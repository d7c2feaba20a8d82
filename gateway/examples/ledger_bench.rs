//! Idempotency ledger throughput: claim + complete pairs for distinct keys.
//!
//! ```sh
//! cargo run --release -p gateway --example ledger_bench -- --url sqlite:///tmp/gw.db --requests 20000 --concurrency 32
//! cargo run --release -p gateway --example ledger_bench     # SQLite (temp file) and local PostgreSQL, as a table
//! ```
//!
//! Without `--url`, PostgreSQL is `--postgres-url` (default `TEST_POSTGRES_URL` or
//! `postgres://postgres@127.0.0.1:5432/test`), in a fresh schema dropped afterwards.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use gateway::store::{Claim, LedgerKey, RequestFingerprint, ScratchSchema, Store, redact_url};
use proto::Vin;

#[derive(Parser)]
#[command(about = "Idempotency ledger benchmark: claim + complete pairs for distinct keys")]
struct Args {
    /// Database to benchmark; without it, SQLite in a temporary file and the local PostgreSQL.
    #[arg(long)]
    url: Option<String>,
    /// PostgreSQL server for the run without --url.
    #[arg(
        long,
        env = "TEST_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    postgres_url: String,
    /// Claim + complete pairs.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Pairs in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
}

struct Figures {
    backend: String,
    pairs: usize,
    concurrency: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl Figures {
    fn per_second(&self) -> f64 {
        self.pairs as f64 / self.elapsed.as_secs_f64()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.requests == 0 || args.concurrency == 0 {
        bail!("--requests and --concurrency must be positive");
    }
    let results = match &args.url {
        Some(url) => vec![bench(url, &args).await?],
        None => {
            let dir = tempfile::tempdir()?;
            let sqlite = format!("sqlite://{}/ledger-bench.db", dir.path().display());
            let sqlite = bench(&sqlite, &args).await?;
            let postgres = bench_in_fresh_schema(&args).await?;
            vec![sqlite, postgres]
        }
    };
    println!();
    println!("| backend | pairs | concurrency | pairs/s | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for f in &results {
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} |",
            f.backend,
            f.pairs,
            f.concurrency,
            f.per_second(),
            ms(f.p50),
            ms(f.p99),
            ms(f.max)
        );
    }
    Ok(())
}

async fn bench_in_fresh_schema(args: &Args) -> anyhow::Result<Figures> {
    let base = &args.postgres_url;
    let schema = ScratchSchema::create(base, &format!("ledger_bench_{}", std::process::id()))
        .await
        .with_context(|| format!("cannot reach PostgreSQL at {}", redact_url(base)))?;
    let result = bench(schema.url(), args).await;
    schema.drop().await?;
    result
}

async fn bench(url: &str, args: &Args) -> anyhow::Result<Figures> {
    let store = Store::connect(url).await?;
    eprintln!(
        "{}: {} pairs, {} in flight …",
        redact_url(url),
        args.requests,
        args.concurrency
    );
    let vin = Vin::parse("LSVAU2180N2183294")?;
    let run = std::process::id();
    let request = RequestFingerprint::of("/parking.v1.ParkingPayment/Pay", b"lot=42;minutes=60");
    let response = vec![7u8; 256];
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|w| {
            let (store, vin, request, response, next) = (
                store.clone(),
                vin.clone(),
                request.clone(),
                response.clone(),
                next.clone(),
            );
            let total = args.requests;
            tokio::spawn(async move {
                let owner = format!("bench-{run}-{w}");
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return Ok::<_, anyhow::Error>(latencies);
                    }
                    let key = LedgerKey {
                        vin: vin.clone(),
                        idempotency_key: format!("{run}-{i}"),
                    };
                    let now = now_ms();
                    let t = Instant::now();
                    let claim = store
                        .ledger_claim(&key, &request, &owner, now, 30_000, 86_400_000)
                        .await?;
                    if claim != Claim::Fresh {
                        bail!("key {i}: expected a fresh claim, got {claim:?}");
                    }
                    store.ledger_complete(&key, &owner, &response, now).await?;
                    latencies.push(t.elapsed());
                }
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(args.requests);
    for w in workers {
        latencies.extend(w.await??);
    }
    let elapsed = started.elapsed();
    store.close().await;
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1];
    let figures = Figures {
        backend: store.backend().to_string(),
        pairs: latencies.len(),
        concurrency: args.concurrency,
        elapsed,
        p50: at(0.50),
        p99: at(0.99),
        max: at(1.0),
    };
    println!(
        "{}: {} pairs in {:.2?}: {:.0} pairs/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        figures.backend,
        figures.pairs,
        figures.elapsed,
        figures.per_second(),
        ms(figures.p50),
        ms(figures.p99),
        ms(figures.max)
    );
    Ok(figures)
}

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}
