//! `herald-bench`: Herald's benchmark tool.
//!
//! It starts the real `herald serve` as a child process on a loopback port, and a
//! no-op axum "ceiling" server (this binary's `ceiling-server` subcommand) the same
//! way, then measures, on the same cores:
//!
//! - (a) `throughput`: single-event publish throughput with 64 keep-alive connections;
//! - (b) `latency`: publish → WebSocket receipt latency at a fixed 5,000 events/s;
//! - (c) `query`: query latency on a store of 1,000,000 events (filled through POST);
//! - (d) `memory`: herald's RSS idle, while filling and after the fill and queries;
//! - `interop`: `bus.publish` over JSON-RPC vs. REST, batch ingest, and a local
//!   `nats-server -js` as the ceiling of durable ingest;
//! - `postgres` (not part of `all`): herald on its PostgreSQL store (a throwaway local
//!   server), next to a raw binary `COPY` of the same rows as the ceiling;
//! - `relay`: herald's NATS JetStream relay against a raw JetStream publisher on the same
//!   local `nats-server -js`, and the relay's lag at 5,000 events/s;
//! - `consumer`: durable pull consumers (fetch + ack) against JetStream pull consumers on
//!   the same local `nats-server -js`, redelivery delays on NAK, and RSS with a consumer
//!   far behind.
//!
//! Results are Markdown tables on stdout (pasteable into BENCHMARKS.md); progress goes
//! to stderr. Build with `cargo build --release -p herald -p herald-bench`, then run
//! `target/release/herald-bench all` (or `--quick` for a smoke-sized run).

mod ceiling;
mod client;
mod herald_metrics;
mod nats;
mod process;
mod report;
mod scenario;
mod stats;
mod workload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};

use scenario::Options;

#[derive(Parser)]
#[command(
    name = "herald-bench",
    about = "Benchmarks a real `herald serve` against a no-op ceiling server on loopback."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every scenario, (a) to (d), then `interop`, `relay` and `consumer`, with one machine
    /// description.
    All(RunArgs),
    /// (a) Publish throughput with concurrent keep-alive connections, vs. the ceiling.
    Throughput(RunArgs),
    /// (b) Publish → WebSocket receipt latency at a fixed publish rate.
    Latency(RunArgs),
    /// (c) + (d) Query latency on a filled store, and herald's RSS before and after.
    Query(RunArgs),
    /// (d) Herald's RSS idle, while filling the store and after (no query timing).
    Memory(RunArgs),
    /// JSON-RPC vs. REST publish, batch ingest, and a local NATS JetStream ceiling.
    Interop(RunArgs),
    /// Herald on a throwaway PostgreSQL: publish, batch ingest and queries, vs. raw COPY.
    Postgres(RunArgs),
    /// NATS relay: relay throughput vs. raw JetStream publish, and relay lag at --rate.
    Relay(RunArgs),
    /// Durable consumers: fetch + ack vs. JetStream pull consumers, redelivery delays,
    /// and RSS with a consumer far behind.
    Consumer(RunArgs),
    /// (e) Fan-out: RSS per idle WebSocket stream, and delivery latency to every
    /// subscriber at --fanout-deliveries per second in total.
    Fanout(RunArgs),
    /// (f) Catch-up: one client reads --events stored events from the start, over a
    /// WebSocket with `from_seq=0` and by paging `GET /api/events`.
    Catchup(RunArgs),
    /// Publish throughput with API keys required (a tenant key with a few patterns)
    /// against authentication off, same run: the cost of access control.
    Auth(RunArgs),
    /// One tenant floods past its publish rate limit while another publishes: the calm
    /// tenant's p99 with and without the flood.
    Isolation(RunArgs),
    /// The no-op ceiling server (started by the other subcommands).
    CeilingServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

#[derive(Args, Clone)]
struct RunArgs {
    /// The herald binary to benchmark.
    #[arg(long, default_value = "target/release/herald")]
    herald_bin: PathBuf,
    /// Smoke-sized run: short durations, 100,000 stored events.
    #[arg(long)]
    quick: bool,
    /// Where the servers' temporary directories (and herald's store) are created.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Concurrent keep-alive connections for (a) and for the store fill.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Runs of (a) per server; medians are reported.
    #[arg(long)]
    rounds: Option<usize>,
    /// Measured seconds per run of (a) [default: 10, quick 3].
    #[arg(long)]
    duration: Option<f64>,
    /// Publish rate of (b), events per second.
    #[arg(long, default_value_t = 5_000)]
    rate: u64,
    /// WebSocket subscribers of (e) [default: 10,000, quick 1,000].
    #[arg(long)]
    fanout_streams: Option<usize>,
    /// Deliveries per second of (e), over all subscribers.
    #[arg(long, default_value_t = 20_000)]
    fanout_deliveries: u64,
    /// Measured seconds of (b) [default: 10, quick 2].
    #[arg(long)]
    latency_duration: Option<f64>,
    /// Events per fill request of (c) and (d): 1 publishes one by one through
    /// `POST /api/events`, more through `POST /api/events:batch` (up to 1,000).
    #[arg(long, default_value_t = 1)]
    fill_batch: u64,
    /// Events stored before the queries of (c) [default: 1,000,000, quick 100,000].
    #[arg(long)]
    events: Option<u64>,
    /// Requests per query pattern of (c) [default: 1,000, quick 200].
    #[arg(long)]
    queries: Option<usize>,
    /// Events fetched and acked per round of `consumer` [default: 200,000, quick 20,000].
    #[arg(long)]
    consumer_events: Option<u64>,
    /// Events stored while a consumer waits, for `consumer`'s RSS part; 0 skips it
    /// [default: 1,000,000, quick 100,000].
    #[arg(long)]
    consumer_pending: Option<u64>,
    /// Worker threads of the load generator's runtime [default: number of cores].
    #[arg(long)]
    client_threads: Option<usize>,
    /// (a) also runs a herald with a 10-property event schema that every published event
    /// is validated against, and compares it with the plain herald.
    #[arg(long)]
    schema: bool,
}

impl RunArgs {
    fn options(&self) -> Result<Options> {
        let quick = self.quick;
        let seconds = |value: Option<f64>, full: f64, smoke: f64| -> Result<Duration> {
            let s = value.unwrap_or(if quick { smoke } else { full });
            if !(0.1..=600.0).contains(&s) {
                bail!("durations must be between 0.1 and 600 seconds, got {s}");
            }
            Ok(Duration::from_secs_f64(s))
        };
        if !(1..=1024).contains(&self.connections) {
            bail!("--connections must be 1..=1024");
        }
        if !(1..=100_000).contains(&self.rate) {
            bail!("--rate must be 1..=100000");
        }
        let herald_bin = self.herald_bin.clone();
        let data_parent = match &self.data_dir {
            Some(dir) => dir.clone(),
            None => std::env::temp_dir(),
        };
        Ok(Options {
            herald_bin,
            data_parent,
            quick,
            schema: self.schema,
            connections: self.connections,
            rounds: self.rounds.unwrap_or(3).clamp(1, 20),
            warmup: seconds(None, 2.0, 1.0)?,
            duration: seconds(self.duration, 10.0, 3.0)?,
            rate: self.rate,
            fanout_streams: self
                .fanout_streams
                .unwrap_or(if quick { 1_000 } else { 10_000 })
                .clamp(1, 50_000),
            fanout_deliveries: self.fanout_deliveries.clamp(1, 1_000_000),
            latency_warmup: seconds(None, 1.0, 0.5)?,
            latency_duration: seconds(self.latency_duration, 10.0, 2.0)?,
            publishers: 256,
            fill_events: self
                .events
                .unwrap_or(if quick { 100_000 } else { 1_000_000 })
                .clamp(1_000, 20_000_000),
            fill_batch: self.fill_batch.clamp(1, 1_000),
            queries: self
                .queries
                .unwrap_or(if quick { 200 } else { 1_000 })
                .clamp(10, 100_000),
            consumer_events: self
                .consumer_events
                .unwrap_or(if quick { 20_000 } else { 200_000 })
                .clamp(1_000, 10_000_000),
            consumer_pending: match self.consumer_pending.unwrap_or(if quick {
                100_000
            } else {
                1_000_000
            }) {
                0 => 0,
                pending => pending.clamp(1_000, 20_000_000),
            },
        })
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::CeilingServer { listen } => {
            if !listen.ip().is_loopback() {
                bail!("the ceiling server only listens on loopback addresses");
            }
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(ceiling::serve(listen))
        }
        Command::All(args) => run(
            &args,
            &[
                Scenario::Throughput,
                Scenario::Latency,
                Scenario::Query,
                Scenario::Interop,
                Scenario::Relay,
                Scenario::Consumer,
            ],
        ),
        Command::Throughput(args) => run(&args, &[Scenario::Throughput]),
        Command::Latency(args) => run(&args, &[Scenario::Latency]),
        Command::Query(args) => run(&args, &[Scenario::Query]),
        Command::Memory(args) => run(&args, &[Scenario::Memory]),
        Command::Interop(args) => run(&args, &[Scenario::Interop]),
        Command::Postgres(args) => run(&args, &[Scenario::Postgres]),
        Command::Relay(args) => run(&args, &[Scenario::Relay]),
        Command::Consumer(args) => run(&args, &[Scenario::Consumer]),
        Command::Fanout(args) => run(&args, &[Scenario::Fanout]),
        Command::Catchup(args) => run(&args, &[Scenario::Catchup]),
        Command::Auth(args) => run(&args, &[Scenario::Auth]),
        Command::Isolation(args) => run(&args, &[Scenario::Isolation]),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Throughput,
    Latency,
    Query,
    Memory,
    Interop,
    Postgres,
    Relay,
    Consumer,
    Fanout,
    Catchup,
    Auth,
    Isolation,
}

fn run(args: &RunArgs, scenarios: &[Scenario]) -> Result<()> {
    let options = args.options()?;
    if !options.herald_bin.exists() {
        bail!(
            "{} does not exist; build it with `cargo build --release -p herald` or pass --herald-bin",
            options.herald_bin.display()
        );
    }
    let threads = args
        .client_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .clamp(1, 64);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let started = Instant::now();
    let mode = if options.quick {
        "--quick (smoke sizes)".to_string()
    } else {
        "full".to_string()
    };
    report::flush_page_cache();
    let jitter = report::sleep_jitter(Duration::from_secs(if options.quick { 1 } else { 2 }));
    println!("# Herald benchmark\n");
    println!(
        "{}",
        report::machine_table(&options.data_parent, &options.herald_bin, &mode, jitter)
    );
    println!(
        "Load generator: this process, one tokio runtime with {threads} worker thread(s), one hyper \
         HTTP/1.1 keep-alive connection per task; the servers run as separate processes on the \
         same cores. Latencies are exact percentiles over every request of the measured window.\n"
    );
    runtime.block_on(async {
        for scenario in scenarios {
            report::flush_page_cache();
            let markdown = match scenario {
                Scenario::Throughput => scenario::throughput::run(&options).await?,
                Scenario::Latency => scenario::latency::run(&options).await?,
                Scenario::Query => scenario::storage::run(&options, true).await?,
                Scenario::Memory => scenario::storage::run(&options, false).await?,
                Scenario::Interop => scenario::interop::run(&options).await?,
                Scenario::Postgres => scenario::postgres::run(&options).await?,
                Scenario::Relay => scenario::relay::run(&options).await?,
                Scenario::Consumer => scenario::consumer::run(&options).await?,
                Scenario::Fanout => scenario::fanout::run(&options).await?,
                Scenario::Catchup => scenario::catchup::run(&options).await?,
                Scenario::Auth => scenario::auth::run(&options).await?,
                Scenario::Isolation => scenario::isolation::run(&options).await?,
            };
            println!("{markdown}");
        }
        Ok::<_, anyhow::Error>(())
    })?;
    println!(
        "Total benchmark time: {:.0} s.",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
