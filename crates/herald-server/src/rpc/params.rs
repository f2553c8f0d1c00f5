//! Reading a call's `params` against its method's [`ParamSpec`]s, by hand, so that
//! every mistake names the parameter and says why (`data.param`, `data.reason`).
//!
//! Params come by name (an object) or by position (an array, in the spec's order).
//! Unknown names and repeated names are errors (a misspelt filter must not silently
//! match everything); `null` counts as absent; required params are checked before the
//! method sees them. Values stay the raw JSON text they were sent as, so a payload is
//! stored byte for byte.

use std::fmt;

use herald_core::{Pattern, Payload, Seq, Subject, Timestamp};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::error::ErrorCode;
use crate::http::truncate;
use crate::rpc::error::RpcError;
use crate::rpc::wire::ParamSpec;

/// The params of one call (or one item of `bus.publish_batch`), checked against a spec.
pub struct Params<'a> {
    spec: &'static [ParamSpec],
    given: Vec<(&'static ParamSpec, &'a RawValue)>,
}

impl<'a> Params<'a> {
    /// Checks `raw` (the `params` member, absent or an object or array) against `spec`.
    pub fn parse(
        method: &str,
        spec: &'static [ParamSpec],
        raw: Option<&'a RawValue>,
    ) -> Result<Self, RpcError> {
        let names = || spec.iter().map(|p| p.name).collect::<Vec<_>>().join(", ");
        let mut given: Vec<(&'static ParamSpec, &'a RawValue)> = Vec::new();
        match raw {
            None => {}
            Some(raw) if kind(raw) == "an array" => {
                let values: Vec<&'a RawValue> = serde_json::from_str(raw.get())
                    .map_err(|e| RpcError::invalid_request(format!("`params`: {e}")))?;
                if values.len() > spec.len() {
                    return Err(RpcError::invalid_param(
                        ErrorCode::InvalidBody,
                        "params",
                        format!(
                            "has {} positional values; `{method}` takes at most {} ({})",
                            values.len(),
                            spec.len(),
                            names()
                        ),
                    ));
                }
                given.extend(spec.iter().zip(values));
            }
            Some(raw) => {
                let Members(members) = serde_json::from_str(raw.get()).map_err(|e| {
                    RpcError::invalid_param(ErrorCode::InvalidBody, "params", e.to_string())
                })?;
                for (name, value) in members {
                    let Some(param) = spec.iter().find(|p| p.name == name) else {
                        let takes = if spec.is_empty() {
                            format!("`{method}` takes no params")
                        } else {
                            format!("`{method}` takes {}", names())
                        };
                        return Err(RpcError::invalid_param(
                            ErrorCode::InvalidBody,
                            &truncate(&name),
                            format!("is not a parameter: {takes}"),
                        ));
                    };
                    given.push((param, value));
                }
            }
        }
        given.retain(|(_, value)| value.get() != "null");
        for param in spec.iter().filter(|p| p.required) {
            if !given.iter().any(|(p, _)| p.name == param.name) {
                return Err(RpcError::invalid_param(
                    param.error,
                    param.name,
                    "is required",
                ));
            }
        }
        Ok(Params { spec, given })
    }

    /// The raw value of `name`, if given.
    pub fn take(&mut self, name: &str) -> Option<&'a RawValue> {
        debug_assert!(
            self.spec.iter().any(|p| p.name == name),
            "`{name}` is read but not in the spec"
        );
        let i = self.given.iter().position(|(p, _)| p.name == name)?;
        Some(self.given.swap_remove(i).1)
    }

    /// An error in parameter `name`, with that parameter's `data.code`.
    pub fn invalid(&self, name: &str, reason: impl Into<String>) -> RpcError {
        let code = self
            .spec
            .iter()
            .find(|p| p.name == name)
            .map_or(ErrorCode::InvalidBody, |p| p.error);
        RpcError::invalid_param(code, name, reason)
    }

    pub fn string(&mut self, name: &str) -> Result<Option<String>, RpcError> {
        self.take(name)
            .map(|raw| {
                serde_json::from_str::<String>(raw.get())
                    .map_err(|_| self.invalid(name, format!("must be a string, not {}", kind(raw))))
            })
            .transpose()
    }

    pub fn uuid(&mut self, name: &str) -> Result<Option<Uuid>, RpcError> {
        self.string(name)?
            .map(|text| {
                Uuid::try_parse(text.trim()).map_err(|_| {
                    self.invalid(name, format!("must be a UUID, got {:?}", truncate(&text)))
                })
            })
            .transpose()
    }

    /// A correlation id: a UUID, or any other non-empty text (at most 256 bytes), which
    /// maps to the same UUIDv5 every time (see `herald_core::correlation_id_from_text`).
    pub fn correlation(&mut self, name: &str) -> Result<Option<Uuid>, RpcError> {
        self.string(name)?
            .map(|text| {
                if text.trim().is_empty() || text.len() > 256 {
                    Err(self.invalid(
                        name,
                        "must be a UUID or a non-empty text of at most 256 bytes",
                    ))
                } else {
                    Ok(herald_core::correlation_id_from_text(&text))
                }
            })
            .transpose()
    }

    /// A whole number in `min..=max`.
    pub fn integer(&mut self, name: &str, min: u64, max: u64) -> Result<Option<u64>, RpcError> {
        self.take(name)
            .map(|raw| {
                serde_json::from_str::<u64>(raw.get())
                    .ok()
                    .filter(|n| (min..=max).contains(n))
                    .ok_or_else(|| {
                        self.invalid(
                            name,
                            format!(
                                "must be a whole number from {min} to {max}, got {}",
                                truncate(raw.get())
                            ),
                        )
                    })
            })
            .transpose()
    }

    pub fn seq(&mut self, name: &str) -> Result<Option<Seq>, RpcError> {
        self.integer(name, 0, i64::MAX as u64)
    }

    pub fn subject(&mut self, name: &str) -> Result<Option<Subject>, RpcError> {
        self.string(name)?
            .map(|text| {
                Subject::new(text).map_err(|e| self.invalid(name, format!("is not valid: {e}")))
            })
            .transpose()
    }

    /// A subject pattern (`*`, `>`, and `%` as `*`, like `GET /api/events`).
    pub fn pattern(&mut self, name: &str) -> Result<Option<Pattern>, RpcError> {
        self.string(name)?
            .map(|text| {
                Pattern::parse_filter(&text)
                    .map_err(|e| self.invalid(name, format!("is not a valid pattern: {e}")))
            })
            .transpose()
    }

    pub fn timestamp(&mut self, name: &str) -> Result<Option<Timestamp>, RpcError> {
        self.string(name)?
            .map(|text| Timestamp::parse(&text).map_err(|e| self.invalid(name, format!("is {e}"))))
            .transpose()
    }

    /// A JSON object, kept as sent; it must pass `herald_core::check_payload`.
    pub fn payload(&mut self, name: &str) -> Result<Option<Payload>, RpcError> {
        self.take(name)
            .map(|raw| {
                let payload = Payload::from_raw(raw.to_owned()).map_err(|e| {
                    self.invalid(name, format!("must be a JSON object, not {}", e.found))
                })?;
                herald_core::check_payload(raw.get())
                    .map_err(|e| self.invalid(name, e.to_string()))?;
                Ok(payload)
            })
            .transpose()
    }

    pub fn array(&mut self, name: &str) -> Result<Option<Vec<&'a RawValue>>, RpcError> {
        self.take(name)
            .map(|raw| {
                serde_json::from_str::<Vec<&'a RawValue>>(raw.get())
                    .map_err(|_| self.invalid(name, format!("must be an array, not {}", kind(raw))))
            })
            .transpose()
    }
}

/// What kind of JSON value `raw` is, for messages: "an object", "a string", ….
pub fn kind(raw: &RawValue) -> &'static str {
    match raw.get().trim_start().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        _ => "a number",
    }
}

/// An object's members in order, raw; a repeated name is an error.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members: Vec<(String, &'de RawValue)> = Vec::new();
                while let Some((name, value)) = map.next_entry::<String, &'de RawValue>()? {
                    if members.iter().any(|(n, _)| *n == name) {
                        return Err(serde::de::Error::custom(format!(
                            "`{}` is given more than once",
                            truncate(&name)
                        )));
                    }
                    members.push((name, value));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static SPEC: &[ParamSpec] = &[
        ParamSpec {
            name: "subject",
            ty: "string",
            required: true,
            description: "",
            error: ErrorCode::InvalidSubject,
        },
        ParamSpec {
            name: "limit",
            ty: "integer",
            required: false,
            description: "",
            error: ErrorCode::InvalidQuery,
        },
    ];

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    fn error(text: Option<&str>) -> serde_json::Value {
        let raw = text.map(raw);
        let error = Params::parse("m", SPEC, raw.as_deref()).err().unwrap();
        serde_json::to_value(error.to_wire()).unwrap()
    }

    #[test]
    fn by_name_and_by_position() {
        for text in [r#"{"subject": "a.b", "limit": 3}"#, r#"["a.b", 3]"#] {
            let raw = raw(text);
            let mut params = Params::parse("m", SPEC, Some(&raw)).unwrap();
            assert_eq!(params.string("subject").unwrap().unwrap(), "a.b");
            assert_eq!(params.integer("limit", 1, 10).unwrap(), Some(3));
        }
        let raw = raw(r#"{"subject": "a.b", "limit": null}"#);
        let mut params = Params::parse("m", SPEC, Some(&raw)).unwrap();
        assert_eq!(params.integer("limit", 1, 10).unwrap(), None);
    }

    #[test]
    fn payloads_pass_the_core_json_checks() {
        static PAYLOAD: &[ParamSpec] = &[ParamSpec {
            name: "payload",
            ty: "object",
            required: true,
            description: "",
            error: ErrorCode::InvalidPayload,
        }];
        let deep = format!(
            r#"{{"payload": {{"a": {}{}}}}}"#,
            "[".repeat(128),
            "]".repeat(128)
        );
        for (text, says) in [
            (r#"{"payload": {"n": 1e400}}"#, "1e400"),
            (r#"{"payload": {"s": "\udead"}}"#, "lone UTF-16 surrogate"),
            (r#"{"payload": {"a": 1, "a": 2}}"#, "twice"),
            (deep.as_str(), "deeper than 100 levels"),
        ] {
            let raw = raw(text);
            let mut params = Params::parse("m", PAYLOAD, Some(&raw)).unwrap();
            let e = params.payload("payload").err().unwrap().to_wire();
            assert_eq!(e.data["code"], "invalid_payload", "{text}");
            assert_eq!(e.data["param"], "payload");
            assert!(e.message.contains(says), "{}", e.message);
        }
    }

    #[test]
    fn mistakes_name_the_param() {
        let e = error(None);
        assert_eq!(
            (e["code"].as_i64(), e["data"]["param"].as_str()),
            (Some(-32602), Some("subject"))
        );
        assert_eq!(e["data"]["code"], "invalid_subject");
        assert_eq!(e["message"], "Invalid params: `subject` is required");
        let e = error(Some(r#"{"subject": "a", "sbject": "b"}"#));
        assert_eq!(e["data"]["param"], "sbject");
        assert!(e["message"]
            .as_str()
            .unwrap()
            .contains("takes subject, limit"));
        let e = error(Some(r#"{"subject": "a", "subject": "b"}"#));
        assert_eq!(e["data"]["param"], "params");
        assert!(e["message"].as_str().unwrap().contains("more than once"));
        let e = error(Some(r#"["a", 1, 2]"#));
        assert_eq!(e["data"]["param"], "params");

        let raw = raw(r#"{"subject": 5, "limit": 1.5}"#);
        let mut params = Params::parse("m", SPEC, Some(&raw)).unwrap();
        let e = params.string("subject").unwrap_err().to_wire();
        assert_eq!(
            e.message,
            "Invalid params: `subject` must be a string, not a number"
        );
        let e = params.integer("limit", 1, 10).unwrap_err().to_wire();
        assert_eq!(e.data["code"], "invalid_query");
        assert_eq!(
            e.data["reason"],
            "must be a whole number from 1 to 10, got 1.5"
        );
    }
}
