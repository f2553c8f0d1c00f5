//! CloudEvents v1.0: the attributes an event keeps when it arrived as a CloudEvent, and
//! the one mapping between a CloudEvent and a Herald event.
//!
//! **Subject**: the `heraldsubject` extension when present, else the CloudEvent `type`
//! (reverse-DNS types such as `com.example.order.created` are already valid subjects).
//! Either must be a literal subject. Taking `type` keeps the mapping deterministic and
//! lets subscribers filter by type with ordinary patterns (`com.example.order.*`);
//! the extension lets a producer place an event anywhere in the namespace.
//!
//! **Identity**: the spec says `(source, id)` identifies a CloudEvent, so the Herald
//! event id is the UUIDv5 of `source` and `id`: re-sending a CloudEvent is a duplicate
//! the store recognises, with no extra index.
//!
//! **Data**: Herald payloads are JSON objects. JSON object data is the payload itself;
//! any other data is kept losslessly inside the payload as `{"data": …}` (other JSON,
//! or text) or `{"data_base64": "…"}` (bytes), and [`DataForm`] records which, so the
//! CloudEvent reads back exactly as it was sent.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::event::Timestamp;
use crate::subject::{Subject, SubjectError};

/// Namespace of the UUIDv5 ids given to CloudEvents (`uuid5(ns, source + "\0" + id)`).
pub const CLOUDEVENT_ID_NAMESPACE: Uuid =
    Uuid::from_u128(0x6a0e_2f3c_8d4b_4e8a_9b71_5c2d_0f6e_a913);

/// The extension that names a Herald subject explicitly.
pub const SUBJECT_EXTENSION: &str = "heraldsubject";
/// The extension that carries a correlation id (a UUID).
pub const CORRELATION_EXTENSION: &str = "correlationid";

/// Attributes defined by the spec; anything else in a structured event is an extension.
pub const CONTEXT_ATTRIBUTES: &[&str] = &[
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
];

/// How the CloudEvent's data is kept in the Herald payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataForm {
    /// No data: the payload is `{}`.
    Absent,
    /// JSON object data: the payload is the data.
    Object,
    /// Other JSON (array, string, number, boolean, null) or text: `{"data": …}`.
    Wrapped,
    /// Bytes: `{"data_base64": "…"}`.
    Base64,
}

impl DataForm {
    pub fn as_str(self) -> &'static str {
        match self {
            DataForm::Absent => "absent",
            DataForm::Object => "object",
            DataForm::Wrapped => "wrapped",
            DataForm::Base64 => "base64",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "absent" => DataForm::Absent,
            "object" => DataForm::Object,
            "wrapped" => DataForm::Wrapped,
            "base64" => DataForm::Base64,
            _ => return None,
        })
    }
}

/// An extension attribute's value. The spec's other types (URI, timestamp, binary)
/// travel as strings.
#[derive(Debug, Clone, PartialEq)]
pub enum ExtensionValue {
    String(String),
    Integer(i64),
    Boolean(bool),
}

impl ExtensionValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            ExtensionValue::String(s) => Some(s),
            _ => None,
        }
    }
}

/// The context attributes of a CloudEvent, as sent.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudEventAttributes {
    pub id: String,
    pub source: String,
    /// Always `1.0`: other versions are rejected.
    pub specversion: String,
    pub ty: String,
    pub subject: Option<String>,
    /// As sent (an RFC 3339 timestamp), so it reads back byte for byte.
    pub time: Option<String>,
    pub datacontenttype: Option<String>,
    pub dataschema: Option<String>,
    pub extensions: BTreeMap<String, ExtensionValue>,
    pub data_form: DataForm,
}

/// What is wrong with a CloudEvent. Messages are written for API clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloudEventError {
    #[error("the required attribute `{0}` is missing or empty")]
    Missing(&'static str),
    #[error("`specversion` must be \"1.0\", got {0:?}")]
    UnsupportedVersion(String),
    #[error("`time` must be an RFC 3339 timestamp, got {0:?}")]
    InvalidTime(String),
    #[error("attribute `{name}`: {reason}")]
    InvalidAttribute { name: String, reason: String },
    #[error("extension name {0:?} is invalid: names are 1 to 20 lowercase letters or digits")]
    InvalidExtensionName(String),
    #[error("the event's Herald subject {subject:?} is invalid ({reason}); set the `heraldsubject` extension to a literal subject such as `hub.local-hub.order.created`")]
    InvalidSubject {
        subject: String,
        reason: SubjectError,
    },
    #[error("`data` and `data_base64` cannot both be present")]
    BothDataForms,
}

impl CloudEventAttributes {
    /// Checks the attributes against the spec.
    pub fn validate(&self) -> Result<(), CloudEventError> {
        if self.specversion != "1.0" {
            return Err(CloudEventError::UnsupportedVersion(
                self.specversion.clone(),
            ));
        }
        for (name, value) in [
            ("id", &self.id),
            ("source", &self.source),
            ("type", &self.ty),
        ] {
            if value.is_empty() {
                return Err(CloudEventError::Missing(name));
            }
        }
        for (name, value) in [
            ("subject", &self.subject),
            ("datacontenttype", &self.datacontenttype),
            ("dataschema", &self.dataschema),
        ] {
            if value.as_deref() == Some("") {
                return Err(CloudEventError::InvalidAttribute {
                    name: name.to_owned(),
                    reason: "must not be empty when present".to_owned(),
                });
            }
        }
        if self.source.chars().any(char::is_whitespace) {
            return Err(CloudEventError::InvalidAttribute {
                name: "source".into(),
                reason: "must be a URI-reference (no whitespace)".into(),
            });
        }
        if let Some(time) = &self.time {
            if chrono::DateTime::parse_from_rfc3339(time).is_err() {
                return Err(CloudEventError::InvalidTime(time.clone()));
            }
        }
        for name in self.extensions.keys() {
            validate_extension_name(name)?;
        }
        Ok(())
    }

    /// The Herald subject this CloudEvent is stored under.
    pub fn herald_subject(&self) -> Result<Subject, CloudEventError> {
        let text = self
            .extensions
            .get(SUBJECT_EXTENSION)
            .and_then(ExtensionValue::as_str)
            .unwrap_or(&self.ty);
        Subject::new(text).map_err(|reason| CloudEventError::InvalidSubject {
            subject: text.chars().take(64).collect(),
            reason,
        })
    }

    /// The Herald event id: the same `(source, id)` always gives the same UUID.
    pub fn herald_id(&self) -> Uuid {
        herald_id(&self.source, &self.id)
    }

    /// The `correlationid` extension, when it is a UUID.
    pub fn correlation_id(&self) -> Option<Uuid> {
        self.extensions
            .get(CORRELATION_EXTENSION)
            .and_then(ExtensionValue::as_str)
            .and_then(|s| Uuid::try_parse(s).ok())
    }

    /// `time` as a [`Timestamp`], when present and valid.
    pub fn time(&self) -> Option<Timestamp> {
        self.time.as_deref().and_then(|t| Timestamp::parse(t).ok())
    }
}

/// The Herald event id of the CloudEvent `(source, id)`.
pub fn herald_id(source: &str, id: &str) -> Uuid {
    let mut name = Vec::with_capacity(source.len() + id.len() + 1);
    name.extend_from_slice(source.as_bytes());
    name.push(0);
    name.extend_from_slice(id.as_bytes());
    Uuid::new_v5(&CLOUDEVENT_ID_NAMESPACE, &name)
}

/// Extension names: lowercase ASCII letters and digits, 1 to 20 of them (spec §3.1.1),
/// and not a context attribute or `data`.
pub fn validate_extension_name(name: &str) -> Result<(), CloudEventError> {
    let valid = (1..=20).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && !CONTEXT_ATTRIBUTES.contains(&name)
        && name != "data";
    if valid {
        Ok(())
    } else {
        Err(CloudEventError::InvalidExtensionName(
            name.chars().take(40).collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs() -> CloudEventAttributes {
        CloudEventAttributes {
            id: "A234-1234-1234".into(),
            source: "https://example.com/orders".into(),
            specversion: "1.0".into(),
            ty: "com.example.order.created".into(),
            subject: None,
            time: Some("2018-04-05T17:31:00Z".into()),
            datacontenttype: Some("application/json".into()),
            dataschema: None,
            extensions: BTreeMap::new(),
            data_form: DataForm::Object,
        }
    }

    #[test]
    fn valid_event_maps_to_subject_and_id() {
        let a = attrs();
        a.validate().unwrap();
        assert_eq!(
            a.herald_subject().unwrap().as_str(),
            "com.example.order.created"
        );
        assert_eq!(a.herald_id(), attrs().herald_id(), "deterministic");
        let mut other = attrs();
        other.source = "https://example.com/other".into();
        assert_ne!(
            a.herald_id(),
            other.herald_id(),
            "source is part of the identity"
        );
        assert_eq!(a.herald_id().get_version_num(), 5);
    }

    #[test]
    fn extension_subject_wins() {
        let mut a = attrs();
        a.extensions.insert(
            SUBJECT_EXTENSION.into(),
            ExtensionValue::String("hub.local-hub.order.created".into()),
        );
        assert_eq!(
            a.herald_subject().unwrap().as_str(),
            "hub.local-hub.order.created"
        );
        a.ty = "not a subject".into();
        assert!(a.herald_subject().is_ok());
        a.extensions.clear();
        assert!(matches!(
            a.herald_subject(),
            Err(CloudEventError::InvalidSubject { .. })
        ));
    }

    #[test]
    fn invalid_attributes() {
        let mut a = attrs();
        a.specversion = "0.3".into();
        assert!(matches!(
            a.validate(),
            Err(CloudEventError::UnsupportedVersion(_))
        ));
        let mut a = attrs();
        a.id.clear();
        assert_eq!(a.validate(), Err(CloudEventError::Missing("id")));
        let mut a = attrs();
        a.time = Some("yesterday".into());
        assert!(matches!(a.validate(), Err(CloudEventError::InvalidTime(_))));
        for bad in [
            "Upper",
            "has-dash",
            "waytoolongextensionname",
            "",
            "type",
            "data",
        ] {
            let mut a = attrs();
            a.extensions
                .insert(bad.into(), ExtensionValue::Boolean(true));
            assert!(a.validate().is_err(), "{bad}");
        }
    }
}
