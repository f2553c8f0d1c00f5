//! The client commands: `publish`, `query` and `tail` against a running hub.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Args)]
pub struct Connection {
    /// Base URL of the hub.
    #[arg(long, env = "HERALD_URL", default_value = "http://127.0.0.1:9001")]
    pub(crate) url: String,
    /// API key (`hrld_…`) for a hub that requires one, sent as a bearer token.
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub(crate) key: Option<ApiKey>,
}

/// An API key given on the command line or in the environment: never shown by `Debug`.
#[derive(Clone)]
pub struct ApiKey(String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<key>")
    }
}

impl std::str::FromStr for ApiKey {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("an API key is printable ASCII without spaces".into());
        }
        Ok(ApiKey(text.to_owned()))
    }
}

impl Connection {
    pub(crate) fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.url.trim_end_matches('/'))
    }

    /// An HTTP client for this hub, sending the key with every request.
    pub(crate) fn client(&self) -> anyhow::Result<reqwest::Client> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(key) = &self.key {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", key.0))
                .context("the API key cannot be sent in a header")?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        Ok(reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .default_headers(headers)
            .build()?)
    }

    /// The key, for a WebSocket handshake's `Authorization` header.
    pub(crate) fn bearer(&self) -> Option<String> {
        self.key.as_ref().map(|key| format!("Bearer {}", key.0))
    }
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Subject to publish to, e.g. hub.local-hub.project.created.
    subject: String,
    /// The payload: a JSON object, or `-` to read it from standard input. Default `{}`.
    payload: Option<String>,
    /// Correlation id (a UUID) to attach.
    #[arg(long)]
    correlation_id: Option<String>,
    /// Put the subject under the hub's namespace: `project.created` is published as
    /// `hub.<hub_id>.project.created` (a subject starting with `hub.` is kept).
    #[arg(long)]
    prefix: bool,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Subject pattern (`*` one token, `>` the rest).
    #[arg(long)]
    subject: Option<String>,
    /// Only events at or after this RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Only events at or before this RFC 3339 time.
    #[arg(long)]
    until: Option<String>,
    #[arg(long)]
    correlation_id: Option<String>,
    /// Only events after this seq.
    #[arg(long)]
    after_seq: Option<u64>,
    /// At most this many events (1 to 1000).
    #[arg(long)]
    limit: Option<u32>,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// Subject pattern to follow.
    #[arg(default_value = "hub.>")]
    pattern: String,
    /// Replay stored events after this seq first (0 = from the beginning).
    #[arg(long)]
    from_seq: Option<u64>,
    #[command(flatten)]
    connection: Connection,
}

/// A stream frame, with the event kept exactly as the hub sent it.
#[derive(serde::Deserialize)]
struct Frame<'a> {
    #[serde(borrow)]
    data: &'a serde_json::value::RawValue,
}

#[derive(serde::Deserialize)]
struct SeqOnly {
    seq: u64,
}

/// Prints a response body; a non-2xx status becomes a failing exit code.
async fn finish(response: reqwest::Response) -> anyhow::Result<ExitCode> {
    let status = response.status();
    let body = response.text().await.context("reading the response")?;
    if status.is_success() {
        println!("{body}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("herald: the hub answered {status}: {body}");
        Ok(ExitCode::FAILURE)
    }
}

pub async fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let text = match args.payload.as_deref() {
        None => "{}".to_owned(),
        Some("-") => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading the payload from standard input")?;
            text
        }
        Some(text) => text.to_owned(),
    };
    let payload: Value = serde_json::from_str(&text).context("the payload is not valid JSON")?;
    let subject = if args.prefix {
        let index: Value = args
            .connection
            .client()?
            .get(args.connection.endpoint("/"))
            .send()
            .await
            .with_context(|| format!("cannot reach the hub at {}", args.connection.url))?
            .json()
            .await
            .context("reading the hub's id from GET /")?;
        let hub_id = index["hub_id"]
            .as_str()
            .context("GET / did not name the hub's id")?;
        herald_core::qualify_subject(hub_id, &args.subject)
    } else {
        args.subject
    };
    let mut body = serde_json::json!({ "subject": subject, "payload": payload });
    if let Some(id) = args.correlation_id {
        body["correlation_id"] = Value::String(id);
    }
    let response = args
        .connection
        .client()?
        .post(args.connection.endpoint("/api/events"))
        .json(&body)
        .send()
        .await
        .with_context(|| format!("cannot reach the hub at {}", args.connection.url))?;
    finish(response).await
}

pub async fn query(args: QueryArgs) -> anyhow::Result<ExitCode> {
    let mut params: Vec<(&str, String)> = Vec::new();
    let optional = [
        ("subject", args.subject),
        ("since", args.since),
        ("until", args.until),
        ("correlation_id", args.correlation_id),
        ("after_seq", args.after_seq.map(|v| v.to_string())),
        ("limit", args.limit.map(|v| v.to_string())),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            params.push((name, value));
        }
    }
    let response = args
        .connection
        .client()?
        .get(args.connection.endpoint("/api/events"))
        .query(&params)
        .send()
        .await
        .with_context(|| format!("cannot reach the hub at {}", args.connection.url))?;
    finish(response).await
}

/// Follows a stream, printing each event as one JSON line. When the connection drops
/// it reconnects from the last seq printed, so nothing is missed or printed twice.
pub async fn tail(args: TailArgs) -> anyhow::Result<ExitCode> {
    let base = args.connection.url.trim_end_matches('/');
    let ws_base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    };
    let mut position = args.from_seq;
    let mut failures = 0u32;
    loop {
        let mut url = reqwest::Url::parse(&format!("{ws_base}/api/events/stream"))
            .context("the --url is not a valid URL")?;
        url.query_pairs_mut().append_pair("subject", &args.pattern);
        if let Some(seq) = position {
            url.query_pairs_mut()
                .append_pair("from_seq", &seq.to_string());
        }
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                url.as_str(),
            )
            .context("the --url is not a valid WebSocket URL")?;
        if let Some(bearer) = args.connection.bearer() {
            request.headers_mut().insert(
                "authorization",
                bearer
                    .parse()
                    .context("the API key cannot be sent in a header")?,
            );
        }
        let socket = match tokio_tungstenite::connect_async(request).await {
            Ok((socket, _)) => {
                failures = 0;
                socket
            }
            Err(error) => {
                failures += 1;
                if failures > 5 {
                    anyhow::bail!("cannot stream from {}: {error}", args.connection.url);
                }
                tokio::time::sleep(Duration::from_millis(200 * u64::from(failures))).await;
                continue;
            }
        };
        let (_, mut incoming) = socket.split();
        while let Some(message) = incoming.next().await {
            match message {
                Ok(Message::Text(text)) => {
                    let frame: Frame<'_> = serde_json::from_str(&text)
                        .context("the hub sent a frame that is not a stream frame")?;
                    let seq: SeqOnly = serde_json::from_str(frame.data.get())
                        .context("the hub sent an event without a seq")?;
                    position = Some(seq.seq);
                    let mut stdout = std::io::stdout().lock();
                    if writeln!(stdout, "{}", frame.data.get()).is_err() || stdout.flush().is_err()
                    {
                        // The reader went away (e.g. `| head`): that is a normal end.
                        return Ok(ExitCode::SUCCESS);
                    }
                }
                Ok(Message::Close(frame)) => {
                    if let Some(frame) = frame {
                        eprintln!("herald: stream closed by the hub: {}", frame.reason);
                    }
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        // Resume from where we were; a live-only tail resumes from the last seq seen.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A collection of a hub's HTTP API (`/api/consumers`, `/api/rules`, …), for the
/// client commands that manage it.
pub(crate) struct Resource {
    pub(crate) client: reqwest::Client,
    base: reqwest::Url,
    collection: &'static [&'static str],
}

/// A 2xx answer's body, or the failure already told on stderr.
pub(crate) type Answer = Result<String, ()>;

impl Resource {
    pub(crate) fn new(
        connection: &Connection,
        collection: &'static [&'static str],
    ) -> anyhow::Result<Resource> {
        let base = reqwest::Url::parse(&connection.url)
            .with_context(|| format!("the --url {:?} is not a valid URL", connection.url))?;
        if base.cannot_be_a_base() {
            anyhow::bail!("the --url {:?} is not an http(s) URL", connection.url);
        }
        Ok(Resource {
            client: connection.client()?,
            base,
            collection,
        })
    }

    /// The collection's URL with `segments` appended, each percent-encoded.
    pub(crate) fn url(&self, segments: &[&str]) -> reqwest::Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("checked in Resource::new")
            .pop_if_empty()
            .extend(self.collection)
            .extend(segments);
        url
    }

    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        segments: &[&str],
        body: Option<&Value>,
    ) -> anyhow::Result<Answer> {
        let mut request = self.client.request(method, self.url(segments));
        if let Some(body) = body {
            request = request.json(body);
        }
        self.send(request, self.base.as_str()).await
    }

    /// Sends `request`; a refusal is told on stderr with the hub's error code and message.
    pub(crate) async fn send(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> anyhow::Result<Answer> {
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the hub at {url}"))?;
        let status = response.status();
        let text = response.text().await.context("reading the response")?;
        if status.is_success() {
            return Ok(Ok(text));
        }
        let error: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        match (
            error["error"]["code"].as_str(),
            error["error"]["message"].as_str(),
        ) {
            (Some(code), Some(message)) => eprintln!("herald: {code}: {message} ({status})"),
            _ => eprintln!("herald: the hub answered {status}: {text}"),
        }
        Ok(Err(()))
    }
}

/// Prints a 2xx answer; the exit code says whether there was one.
pub(crate) fn print(answer: Answer) -> ExitCode {
    match answer {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(()) => ExitCode::FAILURE,
    }
}
