//! The JSON shapes of durable consumers (`/api/consumers`), and reading their request
//! bodies field by field, so that each problem names its field.

use herald_core::{Pattern, Seq, Timestamp};
use herald_hub::consumers::{
    ConsumerConfig, ConsumerInfo, DeliverPolicy, Message as HubMessage, Settle,
    Settled as HubSettled, MAX_DELAY_MS,
};
use herald_store::ConsumerDeadLetter;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::Event;

/// Longest `reason` of a NAK or term, in characters.
pub const MAX_REASON_CHARS: usize = 1024;

/// A consumer as the API shows it: its settings and its state.
#[derive(Debug, Serialize, ToSchema)]
pub struct Consumer {
    /// `[A-Za-z0-9_-]{1,128}`.
    pub name: String,
    /// The subjects it takes (any of them).
    pub filter_subjects: Vec<String>,
    /// `all`, `new`, `by_start_seq` or `by_start_time`.
    pub deliver_policy: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opt_start_seq: Option<Seq>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub opt_start_time: Option<String>,
    pub ack_wait_ms: u64,
    /// `-1`: unlimited.
    pub max_deliver: i64,
    /// `null`: 1 s doubling to 5 minutes, with ±10 % jitter.
    pub backoff_ms: Option<Vec<u64>>,
    pub max_ack_pending: u32,
    pub description: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    pub state: ConsumerState,
}

/// Where a consumer stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsumerState {
    /// Every matching event at or below this seq is settled (acked, termed or dead).
    pub ack_floor: Seq,
    /// Every matching event at or below this seq has been delivered at least once.
    pub last_delivered_seq: Seq,
    /// Matching events not delivered yet.
    pub num_pending: u64,
    /// Delivered and not yet settled.
    pub num_ack_pending: u64,
    /// Of those, delivered more than once.
    pub num_redelivered: u64,
    pub num_dead_letters: u64,
    /// Matching events retention deleted before they were handed out: skipped, never
    /// silently.
    pub skipped_by_retention: u64,
    /// Why nothing new is delivered although events wait: `max_ack_pending` (the pending
    /// set is full; ack or raise the limit). `null` otherwise.
    pub stalled: Option<&'static str>,
}

impl From<ConsumerInfo> for Consumer {
    fn from(info: ConsumerInfo) -> Self {
        let config = info.config;
        let (deliver_policy, opt_start_seq, opt_start_time) = match config.deliver_policy {
            DeliverPolicy::All => ("all", None, None),
            DeliverPolicy::New => ("new", None, None),
            DeliverPolicy::ByStartSeq { opt_start_seq } => {
                ("by_start_seq", Some(opt_start_seq), None)
            }
            DeliverPolicy::ByStartTime { opt_start_time } => {
                ("by_start_time", None, Some(opt_start_time.to_rfc3339()))
            }
        };
        Consumer {
            name: info.name,
            filter_subjects: config
                .filter_subjects
                .iter()
                .map(|p| p.as_str().to_owned())
                .collect(),
            deliver_policy,
            opt_start_seq,
            opt_start_time,
            ack_wait_ms: config.ack_wait_ms,
            max_deliver: config.max_deliver.map_or(-1, i64::from),
            backoff_ms: config.backoff_ms,
            max_ack_pending: config.max_ack_pending,
            description: config.description,
            created_at: info.created_at.to_rfc3339(),
            state: ConsumerState {
                ack_floor: info.state.ack_floor,
                last_delivered_seq: info.state.last_delivered_seq,
                num_pending: info.state.num_pending,
                num_ack_pending: info.state.num_ack_pending,
                num_redelivered: info.state.num_redelivered,
                num_dead_letters: info.state.num_dead_letters,
                skipped_by_retention: info.state.skipped_by_retention,
                stalled: info.state.stalled.map(|s| s.as_str()),
            },
        }
    }
}

/// `GET /api/consumers`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsumerList {
    pub consumers: Vec<Consumer>,
    pub count: usize,
}

/// A message handed out by a fetch or a consumer stream.
#[derive(Debug, Serialize, ToSchema)]
pub struct Message<'a> {
    /// Hand it back to ack, NAK, extend or term this delivery.
    pub ack_id: String,
    /// Which delivery this is (1 for the first).
    pub delivery: u32,
    #[schema(value_type = super::EventSchema)]
    pub event: Event<'a>,
}

impl<'a> From<&'a HubMessage> for Message<'a> {
    fn from(message: &'a HubMessage) -> Self {
        Message {
            ack_id: message.ack_id.clone(),
            delivery: message.delivery,
            event: Event::from(&message.event),
        }
    }
}

/// `POST /api/consumers/{name}/fetch`.
#[derive(Debug, Serialize, ToSchema)]
pub struct FetchResponse<'a> {
    /// Empty when nothing came within `wait_ms`.
    pub messages: Vec<Message<'a>>,
}

/// The answer to an ack, NAK, progress or term.
#[derive(Debug, Serialize, ToSchema)]
pub struct SettleResponse {
    /// How many deliveries were settled as asked.
    pub done: u64,
    /// Ack ids that are malformed, unknown, already settled, or of an earlier delivery.
    pub unknown: Vec<String>,
}

impl From<HubSettled> for SettleResponse {
    fn from(settled: HubSettled) -> Self {
        SettleResponse {
            done: settled.done,
            unknown: settled.unknown,
        }
    }
}

/// A message a consumer gave up on.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsumerDeadLetterJson<'a> {
    #[schema(value_type = super::EventSchema)]
    pub event: Event<'a>,
    /// How many times it was delivered.
    pub deliveries: u32,
    /// `max_deliver` or `term`.
    pub reason: &'static str,
    /// The `reason` of the last NAK or term.
    pub last_error: Option<String>,
    #[schema(format = DateTime)]
    pub first_delivered_at: String,
    #[schema(format = DateTime)]
    pub dead_at: String,
}

impl<'a> From<&'a ConsumerDeadLetter> for ConsumerDeadLetterJson<'a> {
    fn from(dead: &'a ConsumerDeadLetter) -> Self {
        ConsumerDeadLetterJson {
            event: Event::from(&dead.event),
            deliveries: dead.deliveries,
            reason: dead.reason.as_str(),
            last_error: dead.last_error.clone(),
            first_delivered_at: dead.first_delivered_at.to_rfc3339(),
            dead_at: dead.dead_at.to_rfc3339(),
        }
    }
}

/// `GET /api/consumers/{name}/dead-letters`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsumerDeadLetterList<'a> {
    pub dead_letters: Vec<ConsumerDeadLetterJson<'a>>,
    pub count: usize,
}

/// `POST /api/consumers/{name}/dead-letters/redrive`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RedriveResponse {
    /// How many dead letters went back to delivery.
    pub redriven: u64,
}

/// A field of a request body that is missing, of the wrong type or out of range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

impl FieldError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        FieldError {
            field,
            message: message.into(),
        }
    }
}

/// Reads the fields of one JSON object, refusing fields it was not asked for. `null` is
/// as good as absent only for the fields named nullable (as the schemas say).
pub struct Fields {
    object: Map<String, Value>,
    nullable: &'static [&'static str],
}

impl Fields {
    pub fn new(object: Map<String, Value>, known: &[&str]) -> Result<Self, FieldError> {
        Self::with_nullable(object, known, &[])
    }

    pub fn with_nullable(
        object: Map<String, Value>,
        known: &[&str],
        nullable: &'static [&'static str],
    ) -> Result<Self, FieldError> {
        if let Some(unknown) = object.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(FieldError {
                field: "body",
                message: format!(
                    "unknown field {:?}; known: {}",
                    unknown.chars().take(64).collect::<String>(),
                    known.join(", ")
                ),
            });
        }
        Ok(Fields { object, nullable })
    }

    fn get(&self, field: &str) -> Option<&Value> {
        self.object
            .get(field)
            .filter(|v| !(v.is_null() && self.nullable.contains(&field)))
    }

    /// A whole number in `range`, or `None` when absent or null.
    pub fn integer(
        &self,
        field: &'static str,
        range: std::ops::RangeInclusive<i64>,
    ) -> Result<Option<i64>, FieldError> {
        let Some(value) = self.get(field) else {
            return Ok(None);
        };
        let out_of_range = || {
            FieldError::new(
                field,
                format!(
                    "must be a whole number from {} to {}",
                    range.start(),
                    range.end()
                ),
            )
        };
        let number = value.as_number().ok_or_else(out_of_range)?;
        // 5000.0 is as good as 5000 (JSON Schema calls both integers).
        let n = herald_core::json::whole_number(number).ok_or_else(out_of_range)?;
        if !range.contains(&n) {
            return Err(out_of_range());
        }
        Ok(Some(n))
    }

    pub fn string(
        &self,
        field: &'static str,
        max_chars: usize,
    ) -> Result<Option<String>, FieldError> {
        let Some(value) = self.get(field) else {
            return Ok(None);
        };
        let text = value
            .as_str()
            .ok_or_else(|| FieldError::new(field, "must be a string"))?;
        if text.chars().count() > max_chars {
            return Err(FieldError::new(
                field,
                format!("at most {max_chars} characters"),
            ));
        }
        Ok(Some(text.to_owned()))
    }

    fn array(
        &self,
        field: &'static str,
        max_items: usize,
    ) -> Result<Option<&Vec<Value>>, FieldError> {
        let Some(value) = self.get(field) else {
            return Ok(None);
        };
        let items = value
            .as_array()
            .ok_or_else(|| FieldError::new(field, "must be an array"))?;
        if items.len() > max_items {
            return Err(FieldError::new(field, format!("at most {max_items} items")));
        }
        Ok(Some(items))
    }

    /// An array of strings.
    pub fn strings(
        &self,
        field: &'static str,
        max_items: usize,
    ) -> Result<Option<Vec<String>>, FieldError> {
        let Some(items) = self.array(field, max_items)? else {
            return Ok(None);
        };
        items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| FieldError::new(field, "must be an array of strings"))
            })
            .collect::<Result<_, _>>()
            .map(Some)
    }

    /// An array of whole numbers in `range`.
    pub fn integers(
        &self,
        field: &'static str,
        max_items: usize,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<Option<Vec<u64>>, FieldError> {
        let Some(items) = self.array(field, max_items)? else {
            return Ok(None);
        };
        items
            .iter()
            .map(|v| {
                v.as_number()
                    .and_then(herald_core::json::non_negative_whole_number)
                    .filter(|n| range.contains(n))
                    .ok_or_else(|| {
                        FieldError::new(
                            field,
                            format!(
                                "must be an array of whole numbers from {} to {}",
                                range.start(),
                                range.end()
                            ),
                        )
                    })
            })
            .collect::<Result<_, _>>()
            .map(Some)
    }
}

/// A way a client settles deliveries, with the optional fields each takes: the HTTP
/// routes, the WebSocket frames and the JSON-RPC methods read them alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleVerb {
    Ack,
    Nak,
    Progress,
    Term,
}

impl SettleVerb {
    pub fn parse(verb: &str) -> Option<Self> {
        Some(match verb {
            "ack" => SettleVerb::Ack,
            "nak" => SettleVerb::Nak,
            "progress" => SettleVerb::Progress,
            "term" => SettleVerb::Term,
            _ => return None,
        })
    }

    /// The optional fields beside the ack ids (each may be `null`).
    pub fn options(self) -> &'static [&'static str] {
        match self {
            SettleVerb::Nak => &["delay_ms", "reason"],
            SettleVerb::Term => &["reason"],
            SettleVerb::Ack | SettleVerb::Progress => &[],
        }
    }

    /// How to settle, with the verb's options read from `fields`.
    pub fn settle(self, fields: &Fields) -> Result<Settle, FieldError> {
        Ok(match self {
            SettleVerb::Ack => Settle::Ack,
            SettleVerb::Progress => Settle::Progress,
            SettleVerb::Nak => Settle::Nak {
                delay_ms: fields
                    .integer("delay_ms", 0..=MAX_DELAY_MS as i64)?
                    .map(|d| d as u64),
                reason: fields.string("reason", MAX_REASON_CHARS)?,
            },
            SettleVerb::Term => Settle::Term {
                reason: fields.string("reason", MAX_REASON_CHARS)?,
            },
        })
    }
}

/// The body of `PUT /api/consumers/{name}` as a consumer's settings, defaults filled in.
pub fn consumer_config(object: Map<String, Value>) -> Result<ConsumerConfig, FieldError> {
    use herald_hub::consumers::{MAX_ACK_PENDING, MAX_FILTERS};
    let fields = Fields::with_nullable(
        object,
        &[
            "filter_subjects",
            "deliver_policy",
            "opt_start_seq",
            "opt_start_time",
            "ack_wait_ms",
            "max_deliver",
            "backoff_ms",
            "max_ack_pending",
            "description",
        ],
        &["backoff_ms", "description"],
    )?;
    let filters = fields
        .strings("filter_subjects", MAX_FILTERS)?
        .ok_or_else(|| {
            FieldError::new(
                "filter_subjects",
                "is required: the subject patterns to consume, e.g. [\"hub.*.orders.>\"]",
            )
        })?;
    if filters.is_empty() {
        return Err(FieldError::new(
            "filter_subjects",
            "needs at least one subject pattern",
        ));
    }
    let filter_subjects = filters
        .iter()
        .map(|f| {
            Pattern::parse_filter(f).map_err(|e| FieldError::new("filter_subjects", e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let start_seq = fields.integer("opt_start_seq", 1..=i64::MAX)?;
    let start_time = fields
        .string("opt_start_time", 64)?
        .map(|t| Timestamp::parse(&t).map_err(|e| FieldError::new("opt_start_time", e.to_string())))
        .transpose()?;
    let policy = fields.string("deliver_policy", 32)?;
    let deliver_policy = match policy.as_deref().unwrap_or("all") {
        "all" | "new" if start_seq.is_some() => {
            return Err(FieldError::new(
                "opt_start_seq",
                "is only taken with deliver_policy by_start_seq",
            ))
        }
        "all" | "new" if start_time.is_some() => {
            return Err(FieldError::new(
                "opt_start_time",
                "is only taken with deliver_policy by_start_time",
            ))
        }
        "all" => DeliverPolicy::All,
        "new" => DeliverPolicy::New,
        "by_start_seq" => {
            if start_time.is_some() {
                return Err(FieldError::new(
                    "opt_start_time",
                    "is only taken with deliver_policy by_start_time",
                ));
            }
            DeliverPolicy::ByStartSeq {
                opt_start_seq: start_seq.ok_or_else(|| {
                    FieldError::new(
                        "opt_start_seq",
                        "is required with deliver_policy by_start_seq",
                    )
                })? as Seq,
            }
        }
        "by_start_time" => {
            if start_seq.is_some() {
                return Err(FieldError::new(
                    "opt_start_seq",
                    "is only taken with deliver_policy by_start_seq",
                ));
            }
            DeliverPolicy::ByStartTime {
                opt_start_time: start_time.ok_or_else(|| {
                    FieldError::new(
                        "opt_start_time",
                        "is required with deliver_policy by_start_time (RFC 3339)",
                    )
                })?,
            }
        }
        other => {
            return Err(FieldError::new(
                "deliver_policy",
                format!(
                    "must be all, new, by_start_seq or by_start_time, got {:?}",
                    other.chars().take(32).collect::<String>()
                ),
            ))
        }
    };
    let max_deliver = match fields.integer("max_deliver", -1..=i64::from(i32::MAX))? {
        None => Some(ConsumerConfig::DEFAULT_MAX_DELIVER),
        Some(-1) => None,
        Some(0) => {
            return Err(FieldError::new(
                "max_deliver",
                "must be -1 (unlimited) or at least 1",
            ))
        }
        Some(n) => Some(n as u32),
    };
    let backoff_ms = fields.integers("backoff_ms", 64, 0..=MAX_DELAY_MS)?;
    if backoff_ms.as_ref().is_some_and(Vec::is_empty) {
        return Err(FieldError::new(
            "backoff_ms",
            "must hold at least one delay (leave it out for the default)",
        ));
    }
    Ok(ConsumerConfig {
        filter_subjects,
        deliver_policy,
        ack_wait_ms: fields
            .integer("ack_wait_ms", 10..=MAX_DELAY_MS as i64)?
            .map_or(ConsumerConfig::DEFAULT_ACK_WAIT_MS, |n| n as u64),
        max_deliver,
        backoff_ms,
        max_ack_pending: fields
            .integer("max_ack_pending", 1..=i64::from(MAX_ACK_PENDING))?
            .map_or(ConsumerConfig::DEFAULT_MAX_ACK_PENDING, |n| n as u32),
        description: fields.string("description", 1024)?,
    })
}
