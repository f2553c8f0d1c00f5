//! `herald export` and `herald import`: a hub's events as NDJSON (one event per line,
//! as `GET /api/events` shows it), out of one hub and into another.
//!
//! - **Export** pages through `GET /api/events` in seq order with the given filters and
//!   writes each event as one line. Stopped (Ctrl-C, a failure), it says the last seq
//!   written: `--from-seq` that seq resumes without a gap or a duplicate.
//! - **Import** publishes the lines in batches (`POST /api/events:batch`, events that
//!   arrived as CloudEvents one by one, structured, with their correlation id in
//!   `X-Correlation-ID`). Every event keeps its id, so
//!   importing a line twice stores it once: a stopped import is resumed by running it
//!   again, or with `--from-line` to skip what is done. Ids, subjects, payloads,
//!   correlation ids and the origin's service and user are kept; seqs, timestamps and
//!   the hub id are the importing hub's.
//!
//! - **Replay** reads like export and re-publishes like import, page by page, straight
//!   to another hub (`--to URL`), or POSTs each event to a webhook (`--webhook`).
//!
//! All three show a progress bar with rate and ETA on a terminal, and a plain line every few
//! seconds otherwise.

use std::io::{BufRead, BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value};

use crate::client::Connection;

/// Events per `GET /api/events` page (the API's largest).
const PAGE: u32 = 1000;
/// Events per import request.
const IMPORT_BATCH: usize = 500;
/// How often a plain progress line is printed when standard error is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// Which events to read from the hub.
#[derive(Debug, Args)]
struct Filters {
    /// Subject pattern (`*` one token, `>` the rest); default: every event.
    #[arg(long)]
    subject: Option<String>,
    /// Only events at or after this RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Only events at or before this RFC 3339 time.
    #[arg(long)]
    until: Option<String>,
    /// Only events after this seq (resume with the last seq done).
    #[arg(long, default_value_t = 0)]
    from_seq: u64,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    filters: Filters,
    /// Write to this file (appending) instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
    #[command(flatten)]
    connection: Connection,
}

/// `herald replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    filters: Filters,
    /// Where to re-publish: another hub's base URL (events keep their ids, so a replay
    /// run twice stores each once), or with `--webhook` a URL that gets each event as a
    /// JSON POST, in seq order.
    #[arg(long)]
    to: String,
    /// The target hub's API key.
    #[arg(long, env = "HERALD_TO_API_KEY", hide_env_values = true)]
    to_key: Option<crate::client::ApiKey>,
    /// `--to` is a webhook, not a hub.
    #[arg(long)]
    webhook: bool,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The NDJSON file to import (`-`: standard input).
    file: PathBuf,
    /// Skip the lines before this one (1-based): resume where a stopped import said.
    #[arg(long, default_value_t = 1)]
    from_line: u64,
    #[command(flatten)]
    connection: Connection,
}

/// A progress bar on a terminal, plain lines elsewhere.
struct Progress {
    bar: Option<ProgressBar>,
    label: &'static str,
    started: Instant,
    last_line: Instant,
    done: u64,
}

impl Progress {
    fn new(label: &'static str, total: Option<u64>) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match total {
                Some(total) => ProgressBar::new(total),
                None => ProgressBar::new_spinner(),
            };
            let template = if total.is_some() {
                "{prefix} [{bar:30}] {pos}/{len} seqs {per_sec} ETA {eta}"
            } else {
                "{prefix} {spinner} {pos} events {per_sec}"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(label);
            bar
        });
        Progress {
            bar,
            label,
            started: Instant::now(),
            last_line: Instant::now(),
            done: 0,
        }
    }

    /// `position` on the bar's scale (seqs for export, lines for import); `done` events.
    fn update(&mut self, position: u64, done: u64) {
        self.done = done;
        match &self.bar {
            Some(bar) => bar.set_position(position),
            None if self.last_line.elapsed() >= PLAIN_EVERY => {
                self.last_line = Instant::now();
                eprintln!("herald {}: {} events, {}", self.label, done, self.rate());
            }
            None => {}
        }
    }

    fn rate(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        format!("{:.0} events/s", self.done as f64 / secs)
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

pub async fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let client = args.connection.client()?;
    let index: Value = client
        .get(args.connection.endpoint("/"))
        .send()
        .await
        .with_context(|| format!("cannot reach the hub at {}", args.connection.url))?
        .json()
        .await
        .context("reading the hub's head from GET /")?;
    let head = index["head_seq"].as_u64().unwrap_or(0);
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open {}", path.display()))?,
        )),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    let mut progress = Progress::new("export", Some(head.saturating_sub(args.filters.from_seq)));
    let mut after = args.filters.from_seq;
    let mut written = 0u64;
    let mut last_written = args.filters.from_seq;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let outcome = loop {
        let page = tokio::select! {
            page = fetch_page(&client, &args.connection, &args.filters, after) => page,
            _ = &mut interrupted => break Err(anyhow::anyhow!("interrupted")),
        };
        let (events, next) = match page {
            Ok(page) => page,
            Err(error) => break Err(error),
        };
        for event in &events {
            let line = serde_json::to_string(event).context("writing an event")?;
            if let Err(error) = writeln!(out, "{line}") {
                return Err(anyhow::Error::new(error).context("writing the export"));
            }
            written += 1;
            last_written = event["seq"].as_u64().unwrap_or(last_written);
        }
        progress.update(next.saturating_sub(args.filters.from_seq), written);
        if events.is_empty() && next <= after {
            break Ok(());
        }
        after = next;
        if after >= head && events.is_empty() {
            break Ok(());
        }
    };
    out.flush().context("writing the export")?;
    progress.finish();
    match outcome {
        Ok(()) => {
            eprintln!(
                "herald export: {written} events through seq {last_written} ({})",
                progress.rate()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!(
                "herald export: stopped ({error:#}) after {written} events; \
                 resume with --from-seq {last_written}"
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// One page of events after `after`, and the `after_seq` of the next page.
async fn fetch_page(
    client: &reqwest::Client,
    connection: &Connection,
    filters: &Filters,
    after: u64,
) -> anyhow::Result<(Vec<Value>, u64)> {
    let mut params: Vec<(&str, String)> = vec![
        ("after_seq", after.to_string()),
        ("limit", PAGE.to_string()),
    ];
    for (name, value) in [
        ("subject", &filters.subject),
        ("since", &filters.since),
        ("until", &filters.until),
    ] {
        if let Some(value) = value {
            params.push((name, value.clone()));
        }
    }
    let response = client
        .get(connection.endpoint("/api/events"))
        .query(&params)
        .send()
        .await
        .with_context(|| format!("cannot reach the hub at {}", connection.url))?;
    let status = response.status();
    let next = response
        .headers()
        .get("x-next-after-seq")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = response.text().await.context("reading a page of events")?;
    if !status.is_success() {
        bail!("the hub answered {status}: {body}");
    }
    let events: Vec<Value> = serde_json::from_str(&body).context("reading a page of events")?;
    let last = events
        .last()
        .and_then(|e| e["seq"].as_u64())
        .unwrap_or(after);
    Ok((events, next.unwrap_or(last).max(last)))
}

/// How an exported event is published again.
enum Republish {
    /// A publish body for `POST /api/events:batch`.
    Plain(Value),
    /// A structured CloudEvent, and its correlation id (sent as `X-Correlation-ID`).
    CloudEvent(Value, Option<String>),
}

/// The publish body that stores `event` again under the same id.
fn republish(event: Map<String, Value>) -> anyhow::Result<Republish> {
    let mut event = event;
    if let Some(Value::Object(attributes)) = event.remove("cloudevent") {
        let form = match event.remove("cloudevent_data_form") {
            Some(Value::String(form)) => form,
            _ => "object".to_owned(),
        };
        let form = form.as_str();
        let payload = event.remove("payload").unwrap_or(Value::Null);
        let mut structured = attributes;
        match form {
            "absent" => {}
            "wrapped" | "base64" => {
                let member = if form == "wrapped" {
                    "data"
                } else {
                    "data_base64"
                };
                if let Some(value) = payload.get(member) {
                    structured.insert(member.into(), value.clone());
                }
            }
            _ => {
                structured.insert("data".into(), payload);
            }
        }
        let correlation = match event.remove("correlation_id") {
            Some(Value::String(id)) => Some(id),
            _ => None,
        };
        return Ok(Republish::CloudEvent(
            Value::Object(structured),
            correlation,
        ));
    }
    let mut body = Map::new();
    for field in ["id", "subject", "payload", "correlation_id"] {
        match event.remove(field) {
            Some(value) => {
                body.insert(field.into(), value);
            }
            None => bail!("it has no `{field}`"),
        }
    }
    if let Some(Value::Object(origin)) = event.remove("origin") {
        let mut kept = Map::new();
        for field in ["service", "user"] {
            if let Some(value) = origin.get(field).filter(|v| !v.is_null()) {
                kept.insert(field.into(), value.clone());
            }
        }
        body.insert("origin".into(), Value::Object(kept));
    }
    Ok(Republish::Plain(Value::Object(body)))
}

pub async fn import(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let reader: Box<dyn BufRead> = if args.file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(&args.file)
                .with_context(|| format!("cannot open {}", args.file.display()))?,
        ))
    };
    let total = if args.file.as_os_str() == "-" {
        None
    } else {
        Some(count_lines(&args.file)?)
    };
    let client = args.connection.client()?;
    let mut progress = Progress::new("import", total);
    let mut pending: Vec<Value> = Vec::new();
    // Every line before this one is stored.
    let mut done_through = args.from_line.saturating_sub(1);
    let (mut stored, mut duplicates) = (0u64, 0u64);
    let mut number = 0u64;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let outcome: anyhow::Result<()> = async {
        for line in reader.lines() {
            let line = line.context("reading the import file")?;
            number += 1;
            if number < args.from_line || line.trim().is_empty() {
                continue;
            }
            let event: Map<String, Value> = serde_json::from_str(&line)
                .with_context(|| format!("line {number} is not a JSON object"))?;
            let next = republish(event).with_context(|| format!("line {number}"))?;
            let single = matches!(next, Republish::CloudEvent(..));
            // Plain events go in batches; a CloudEvent alone (its correlation id is a
            // header), after the batch before it.
            if !pending.is_empty() && (single || pending.len() >= IMPORT_BATCH) {
                let sent = tokio::select! {
                    sent = send_batch(&client, &args.connection, &mut pending) => sent,
                    _ = &mut interrupted => bail!("interrupted"),
                };
                let (s, d) = sent?;
                stored += s;
                duplicates += d;
                done_through = number - 1;
                progress.update(done_through, stored + duplicates);
            }
            match next {
                Republish::Plain(body) => pending.push(body),
                Republish::CloudEvent(body, correlation) => {
                    let duplicate =
                        send_cloudevent(&client, &args.connection, &body, correlation).await?;
                    if duplicate {
                        duplicates += 1;
                    } else {
                        stored += 1;
                    }
                    done_through = number;
                }
            }
        }
        if !pending.is_empty() {
            let (s, d) = send_batch(&client, &args.connection, &mut pending).await?;
            stored += s;
            duplicates += d;
        }
        done_through = number;
        Ok(())
    }
    .await;
    progress.update(done_through, stored + duplicates);
    progress.finish();
    match outcome {
        Ok(()) => {
            eprintln!(
                "herald import: {stored} stored, {duplicates} already there, {} lines ({})",
                done_through,
                progress.rate()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!(
                "herald import: stopped ({error:#}); every line before {} is stored: \
                 resume with --from-line {}",
                done_through + 1,
                done_through + 1
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The source hub's head seq (`GET /`).
async fn head_of(client: &reqwest::Client, connection: &Connection) -> anyhow::Result<u64> {
    let index: Value = client
        .get(connection.endpoint("/"))
        .send()
        .await
        .with_context(|| format!("cannot reach the hub at {}", connection.url))?
        .json()
        .await
        .context("reading the hub's head from GET /")?;
    Ok(index["head_seq"].as_u64().unwrap_or(0))
}

/// `herald replay`: reads a filtered range of one hub in seq order and re-publishes it,
/// page by page, to another hub (keeping ids, so it is idempotent) or to a webhook.
/// Stopped, it says the last seq done: `--from-seq` that seq resumes.
pub async fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let source = args.connection.client()?;
    let target_connection = Connection {
        url: args.to.clone(),
        key: args.to_key.clone(),
    };
    let target = target_connection.client()?;
    let head = head_of(&source, &args.connection).await?;
    let from = args.filters.from_seq;
    let mut progress = Progress::new("replay", Some(head.saturating_sub(from)));
    let (mut after, mut done_through) = (from, from);
    let (mut sent, mut duplicates) = (0u64, 0u64);
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let outcome: anyhow::Result<()> = async {
        loop {
            let (events, next) = tokio::select! {
                page = fetch_page(&source, &args.connection, &args.filters, after) => page?,
                _ = &mut interrupted => bail!("interrupted"),
            };
            if args.webhook {
                for event in &events {
                    tokio::select! {
                        posted = post_webhook(&target, &args.to, event) => posted?,
                        _ = &mut interrupted => bail!("interrupted"),
                    }
                    sent += 1;
                    done_through = event["seq"].as_u64().unwrap_or(done_through);
                }
            } else {
                // Plain events in batches; CloudEvents one by one (see `import`).
                let mut pending = Vec::new();
                for event in &events {
                    let Value::Object(map) = event.clone() else {
                        bail!("the hub answered an event that is not an object");
                    };
                    match republish(map)? {
                        Republish::Plain(body) => pending.push(body),
                        Republish::CloudEvent(body, correlation) => {
                            let (s, d) = if pending.is_empty() {
                                (0, 0)
                            } else {
                                send_batch(&target, &target_connection, &mut pending).await?
                            };
                            let duplicate =
                                send_cloudevent(&target, &target_connection, &body, correlation)
                                    .await?;
                            sent += s + u64::from(!duplicate);
                            duplicates += d + u64::from(duplicate);
                        }
                    }
                }
                if !pending.is_empty() {
                    let (s, d) = tokio::select! {
                        batch = send_batch(&target, &target_connection, &mut pending) => batch?,
                        _ = &mut interrupted => bail!("interrupted"),
                    };
                    sent += s;
                    duplicates += d;
                }
            }
            // The whole page is sent: everything up to `next` is done.
            done_through = done_through.max(next);
            progress.update(next.saturating_sub(from), sent + duplicates);
            if events.is_empty() && (next <= after || next >= head) {
                return Ok(());
            }
            after = next;
        }
    }
    .await;
    progress.finish();
    match outcome {
        Ok(()) => {
            eprintln!(
                "herald replay: {sent} sent, {duplicates} already there, through seq {done_through} ({})",
                progress.rate()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!(
                "herald replay: stopped ({error:#}) after {sent} events; resume with --from-seq {done_through}"
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// POSTs one event (as `GET /api/events` shows it) to a webhook; a non-2xx is an error.
async fn post_webhook(client: &reqwest::Client, url: &str, event: &Value) -> anyhow::Result<()> {
    let response = client
        .post(url)
        .json(event)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    if !status.is_success() {
        bail!("{url} answered {status}");
    }
    Ok(())
}

fn count_lines(path: &PathBuf) -> anyhow::Result<u64> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut count = 0u64;
    for line in std::io::BufReader::new(file).lines() {
        line.context("reading the import file")?;
        count += 1;
    }
    Ok(count)
}

/// The hub's answer as JSON; a non-2xx status is an error carrying the hub's body.
async fn answer(
    request: reqwest::RequestBuilder,
    connection: &Connection,
) -> anyhow::Result<Value> {
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach the hub at {}", connection.url))?;
    let status = response.status();
    let body = response.text().await.context("reading the hub's answer")?;
    if !status.is_success() {
        bail!("the hub answered {status}: {body}");
    }
    serde_json::from_str(&body).context("reading the hub's answer")
}

/// Publishes one structured CloudEvent; whether it was stored already.
async fn send_cloudevent(
    client: &reqwest::Client,
    connection: &Connection,
    event: &Value,
    correlation: Option<String>,
) -> anyhow::Result<bool> {
    let mut request = client
        .post(connection.endpoint("/api/events"))
        .header("content-type", "application/cloudevents+json")
        .body(serde_json::to_vec(event)?);
    if let Some(id) = correlation {
        request = request.header("x-correlation-id", id);
    }
    let answer = answer(request, connection).await?;
    Ok(answer["duplicate"].as_bool() == Some(true))
}

/// Publishes and empties `pending`: (stored, duplicates).
async fn send_batch(
    client: &reqwest::Client,
    connection: &Connection,
    pending: &mut Vec<Value>,
) -> anyhow::Result<(u64, u64)> {
    let request = client
        .post(connection.endpoint("/api/events:batch"))
        .json(&serde_json::json!({ "events": pending }));
    let answer = answer(request, connection).await?;
    let results = answer["results"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let duplicates = results
        .iter()
        .filter(|r| r["duplicate"].as_bool() == Some(true))
        .count() as u64;
    let sent = pending.len() as u64;
    pending.clear();
    Ok((sent.saturating_sub(duplicates), duplicates))
}
