//! `herald consumer …`: durable consumers of a running hub, over its HTTP API
//! (`/api/consumers`). Answers are printed as JSON on stdout; a refusal prints the
//! hub's error code and message on stderr and exits non-zero.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use crate::client::{print, Connection, Resource};

/// The collection these commands work on.
const CONSUMERS: &[&str] = &["api", "consumers"];

#[derive(Debug, Args)]
pub struct ConsumerArgs {
    #[command(subcommand)]
    command: ConsumerCommand,
}

#[derive(Debug, Subcommand)]
enum ConsumerCommand {
    /// Create a durable consumer, or update the changeable settings of the one of that
    /// name (prints it).
    Create(CreateArgs),
    /// List the consumers with their settings and state.
    List(Connection),
    /// Print one consumer's settings and state.
    Info(NameArgs),
    /// Delete a consumer with its pending messages and dead letters.
    Delete(NameArgs),
    /// Fetch messages, printed one JSON object per line ({ack_id, delivery, event}).
    Fetch(FetchArgs),
    /// Ack deliveries: they are not delivered again.
    Ack(SettleArgs),
    /// Give deliveries back for redelivery.
    Nak(NakArgs),
    /// Restart the ack wait of deliveries still being worked on.
    Progress(SettleArgs),
    /// Give up on deliveries: they go to the dead letters.
    Term(TermArgs),
    /// List a consumer's dead letters.
    DeadLetters(DeadLettersArgs),
    /// Send dead letters back for delivery (all of them when no seq is given).
    Redrive(RedriveArgs),
    /// Discard one dead letter.
    Discard(DiscardArgs),
}

#[derive(Debug, Args)]
struct NameArgs {
    /// The consumer's name.
    name: String,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// The consumer's name: 1 to 128 ASCII letters, digits, '-' or '_'.
    name: String,
    /// A subject pattern to consume (`*` one token, `>` the rest); repeat for more.
    #[arg(long = "filter", required = true, value_name = "PATTERN")]
    filters: Vec<String>,
    /// all (default), new, by_start_seq (with --start-seq) or by_start_time (with
    /// --start-time).
    #[arg(long)]
    deliver_policy: Option<String>,
    /// The first seq to deliver, with --deliver-policy by_start_seq.
    #[arg(long, alias = "opt-start-seq")]
    start_seq: Option<u64>,
    /// The first instant to deliver (RFC 3339), with --deliver-policy by_start_time.
    #[arg(long, alias = "opt-start-time")]
    start_time: Option<String>,
    /// How long a delivery is held before it is redelivered (default 30000).
    #[arg(long)]
    ack_wait_ms: Option<u64>,
    /// Deliveries before a message goes to the dead letters; -1 for unlimited (default 5).
    #[arg(long, allow_negative_numbers = true)]
    max_deliver: Option<i64>,
    /// Delays before the 1st, 2nd, … redelivery, e.g. 1000,5000 (the last repeats).
    #[arg(long, value_delimiter = ',', value_name = "MS,…")]
    backoff_ms: Option<Vec<u64>>,
    /// Most deliveries out at once (default 1000).
    #[arg(long)]
    max_ack_pending: Option<u32>,
    #[arg(long)]
    description: Option<String>,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, Args)]
struct FetchArgs {
    /// The consumer's name.
    name: String,
    /// Most messages (1 to 1000).
    #[arg(long, default_value_t = 1)]
    batch: u32,
    /// Wait up to this long for messages (0 to 60000; the hub ends the wait before its
    /// request timeout).
    #[arg(long, default_value_t = 0)]
    wait_ms: u64,
    /// Ack the messages once they are printed.
    #[arg(long)]
    ack: bool,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, Args)]
struct SettleArgs {
    /// The consumer's name.
    name: String,
    /// The `ack_id`s of the deliveries, as `fetch` printed them.
    #[arg(required = true)]
    ack_ids: Vec<String>,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, Args)]
struct NakArgs {
    #[command(flatten)]
    settle: SettleArgs,
    /// Redeliver after this long (default: the consumer's backoff).
    #[arg(long)]
    delay_ms: Option<u64>,
    /// Why; kept as `last_error` if the message goes to the dead letters.
    #[arg(long)]
    reason: Option<String>,
}

#[derive(Debug, Args)]
struct TermArgs {
    #[command(flatten)]
    settle: SettleArgs,
    /// Why; kept as the dead letter's `last_error`.
    #[arg(long)]
    reason: Option<String>,
}

#[derive(Debug, Args)]
struct DeadLettersArgs {
    /// The consumer's name.
    name: String,
    /// Most dead letters (1 to 1000; default 100).
    #[arg(long)]
    limit: Option<u32>,
    /// Only dead letters with a larger seq.
    #[arg(long)]
    after_seq: Option<u64>,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, Args)]
struct RedriveArgs {
    /// The consumer's name.
    name: String,
    /// The event seqs of the dead letters to redrive; none: all of them.
    seqs: Vec<u64>,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, Args)]
struct DiscardArgs {
    /// The consumer's name.
    name: String,
    /// The dead letter's event seq.
    seq: u64,
    #[command(flatten)]
    connection: Connection,
}

pub async fn run(args: ConsumerArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ConsumerCommand::Create(args) => create(args).await,
        ConsumerCommand::List(connection) => {
            let answer = Resource::new(&connection, CONSUMERS)?
                .call(reqwest::Method::GET, &[], None)
                .await?;
            Ok(print(answer))
        }
        ConsumerCommand::Info(args) => {
            let answer = Resource::new(&args.connection, CONSUMERS)?
                .call(reqwest::Method::GET, &[&args.name], None)
                .await?;
            Ok(print(answer))
        }
        ConsumerCommand::Delete(args) => {
            let answer = Resource::new(&args.connection, CONSUMERS)?
                .call(reqwest::Method::DELETE, &[&args.name], None)
                .await?;
            Ok(print(answer.map(|_| json!({"deleted": true}).to_string())))
        }
        ConsumerCommand::Fetch(args) => fetch(args).await,
        ConsumerCommand::Ack(args) => settle(args, "ack", Map::new()).await,
        ConsumerCommand::Progress(args) => settle(args, "progress", Map::new()).await,
        ConsumerCommand::Nak(args) => {
            let mut extra = Map::new();
            if let Some(delay) = args.delay_ms {
                extra.insert("delay_ms".into(), delay.into());
            }
            if let Some(reason) = args.reason {
                extra.insert("reason".into(), reason.into());
            }
            settle(args.settle, "nak", extra).await
        }
        ConsumerCommand::Term(args) => {
            let mut extra = Map::new();
            if let Some(reason) = args.reason {
                extra.insert("reason".into(), reason.into());
            }
            settle(args.settle, "term", extra).await
        }
        ConsumerCommand::DeadLetters(args) => {
            let hub = Resource::new(&args.connection, CONSUMERS)?;
            let mut url = hub.url(&[&args.name, "dead-letters"]);
            if let Some(limit) = args.limit {
                url.query_pairs_mut()
                    .append_pair("limit", &limit.to_string());
            }
            if let Some(after) = args.after_seq {
                url.query_pairs_mut()
                    .append_pair("after_seq", &after.to_string());
            }
            let answer = hub.send(hub.client.get(url), &args.connection.url).await?;
            Ok(print(answer))
        }
        ConsumerCommand::Redrive(args) => {
            let body = if args.seqs.is_empty() {
                json!({})
            } else {
                json!({ "seqs": args.seqs })
            };
            let answer = Resource::new(&args.connection, CONSUMERS)?
                .call(
                    reqwest::Method::POST,
                    &[&args.name, "dead-letters", "redrive"],
                    Some(&body),
                )
                .await?;
            Ok(print(answer))
        }
        ConsumerCommand::Discard(args) => {
            let seq = args.seq.to_string();
            let answer = Resource::new(&args.connection, CONSUMERS)?
                .call(
                    reqwest::Method::DELETE,
                    &[&args.name, "dead-letters", &seq],
                    None,
                )
                .await?;
            Ok(print(
                answer.map(|_| json!({"discarded": true}).to_string()),
            ))
        }
    }
}

async fn create(args: CreateArgs) -> anyhow::Result<ExitCode> {
    let mut body = Map::new();
    body.insert("filter_subjects".into(), json!(args.filters));
    let optional = [
        ("deliver_policy", args.deliver_policy.map(Value::from)),
        ("opt_start_seq", args.start_seq.map(Value::from)),
        ("opt_start_time", args.start_time.map(Value::from)),
        ("ack_wait_ms", args.ack_wait_ms.map(Value::from)),
        ("max_deliver", args.max_deliver.map(Value::from)),
        ("backoff_ms", args.backoff_ms.map(Value::from)),
        ("max_ack_pending", args.max_ack_pending.map(Value::from)),
        ("description", args.description.map(Value::from)),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            body.insert(name.into(), value);
        }
    }
    let answer = Resource::new(&args.connection, CONSUMERS)?
        .call(
            reqwest::Method::PUT,
            &[&args.name],
            Some(&Value::Object(body)),
        )
        .await?;
    Ok(print(answer))
}

/// A fetch's answer, each message kept exactly as the hub sent it.
#[derive(serde::Deserialize)]
struct Fetched<'a> {
    #[serde(borrow)]
    messages: Vec<&'a RawValue>,
}

#[derive(serde::Deserialize)]
struct AckIdOnly {
    ack_id: String,
}

async fn fetch(args: FetchArgs) -> anyhow::Result<ExitCode> {
    let hub = Resource::new(&args.connection, CONSUMERS)?;
    let request = hub
        .client
        .post(hub.url(&[&args.name, "fetch"]))
        .json(&json!({"batch": args.batch, "wait_ms": args.wait_ms}))
        // The hub may hold the request for the whole wait.
        .timeout(Duration::from_millis(args.wait_ms) + Duration::from_secs(30));
    let Ok(text) = hub.send(request, &args.connection.url).await? else {
        return Ok(ExitCode::FAILURE);
    };
    let fetched: Fetched<'_> =
        serde_json::from_str(&text).context("the hub's fetch answer has no `messages`")?;
    let mut ack_ids = Vec::with_capacity(fetched.messages.len());
    {
        let mut stdout = std::io::stdout().lock();
        for message in &fetched.messages {
            let AckIdOnly { ack_id } = serde_json::from_str(message.get())
                .context("the hub sent a message without an ack_id")?;
            ack_ids.push(ack_id);
            writeln!(stdout, "{}", message.get()).context("writing to stdout")?;
        }
        stdout.flush().context("writing to stdout")?;
    }
    if !args.ack || ack_ids.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let answer = hub
        .call(
            reqwest::Method::POST,
            &[&args.name, "ack"],
            Some(&json!({ "ack_ids": ack_ids })),
        )
        .await?;
    let Ok(text) = answer else {
        return Ok(ExitCode::FAILURE);
    };
    let settled: Value = serde_json::from_str(&text).context("reading the ack's answer")?;
    if let Some(unknown) = settled["unknown"].as_array().filter(|u| !u.is_empty()) {
        // Not an error for the hub (their ack wait ran out: they will come again).
        eprintln!(
            "herald: {} of the messages could not be acked (their ack wait ran out?): {}",
            unknown.len(),
            Value::from(unknown.clone())
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn settle(
    args: SettleArgs,
    verb: &str,
    mut body: Map<String, Value>,
) -> anyhow::Result<ExitCode> {
    body.insert("ack_ids".into(), json!(args.ack_ids));
    let answer = Resource::new(&args.connection, CONSUMERS)?
        .call(
            reqwest::Method::POST,
            &[&args.name, verb],
            Some(&Value::Object(body)),
        )
        .await?;
    Ok(print(answer))
}
