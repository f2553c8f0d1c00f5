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
    #[error("extension name {0:?} is invalid: names are lowercase letters a-z or digits 0-9 (at least one), and not `data` or a context attribute")]
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
        for name in self.extensions.keys() {
            validate_extension_name(name)?;
        }
        let strings = [
            ("id", Some(&self.id)),
            ("source", Some(&self.source)),
            ("type", Some(&self.ty)),
            ("subject", self.subject.as_ref()),
            ("time", self.time.as_ref()),
            ("datacontenttype", self.datacontenttype.as_ref()),
            ("dataschema", self.dataschema.as_ref()),
        ];
        let extension_strings = self
            .extensions
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), Some(value.as_str()?))));
        for (name, value) in strings
            .into_iter()
            .map(|(name, value)| (name, value.map(String::as_str)))
            .chain(extension_strings)
        {
            if let Some(c) = value.and_then(|v| v.chars().find(|c| is_disallowed_char(*c))) {
                return Err(CloudEventError::InvalidAttribute {
                    name: name.to_owned(),
                    reason: format!(
                        "contains U+{:04X}; CloudEvents strings may not contain control characters (U+0000-U+001F, U+007F-U+009F) or noncharacters",
                        u32::from(c)
                    ),
                });
            }
        }
        if let Err(reason) = uri::check_reference(&self.source) {
            return Err(CloudEventError::InvalidAttribute {
                name: "source".into(),
                reason: format!("must be a URI-reference (RFC 3986): {reason}"),
            });
        }
        if let Some(schema) = &self.dataschema {
            let absolute = uri::check_reference(schema).and_then(|has_scheme| {
                if has_scheme {
                    Ok(())
                } else {
                    Err(
                        "it has no scheme (such as `https:`); a relative reference is not enough"
                            .to_owned(),
                    )
                }
            });
            if let Err(reason) = absolute {
                return Err(CloudEventError::InvalidAttribute {
                    name: "dataschema".into(),
                    reason: format!("must be an absolute URI (RFC 3986): {reason}"),
                });
            }
        }
        if let Some(content_type) = &self.datacontenttype {
            if let Err(reason) = check_media_type(content_type) {
                return Err(CloudEventError::InvalidAttribute {
                    name: "datacontenttype".into(),
                    reason: format!(
                        "must be a media type (RFC 2046) such as `application/json` or `text/plain; charset=utf-8`: {reason}"
                    ),
                });
            }
        }
        if let Some(time) = &self.time {
            if chrono::DateTime::parse_from_rfc3339(time).is_err() {
                return Err(CloudEventError::InvalidTime(time.clone()));
            }
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

/// Extension names: lowercase ASCII letters and digits, at least one, and not a
/// context attribute or `data` (spec, "Attribute Naming Convention"). The spec's "SHOULD
/// NOT exceed 20 characters" is advice to producers, so longer names are accepted.
pub fn validate_extension_name(name: &str) -> Result<(), CloudEventError> {
    let valid = !name.is_empty()
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

/// Whether `text` is a valid value of the spec's String type (see [`is_disallowed_char`]).
pub fn is_valid_string(text: &str) -> bool {
    !text.chars().any(is_disallowed_char)
}

/// Checks a URI-reference (RFC 3986 §4.1); answers whether it has a scheme (then it is a
/// URI, possibly with a fragment), or why it is not a URI-reference.
pub fn check_uri_reference(text: &str) -> Result<bool, String> {
    uri::check_reference(text)
}

/// Characters the spec's String type disallows: control characters (U+0000-U+001F,
/// U+007F-U+009F) and Unicode noncharacters (U+FDD0-U+FDEF and the last two code
/// points of every plane). Surrogates cannot occur in a Rust string.
fn is_disallowed_char(c: char) -> bool {
    let code = u32::from(c);
    c.is_control() || (0xFDD0..=0xFDEF).contains(&code) || code & 0xFFFE == 0xFFFE
}

/// RFC 2045 §5.1 `token`: printable US-ASCII but space and tspecials.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b)
}

/// Checks a media type: `type "/" subtype *(";" attribute "=" value)` (RFC 2045 §5.1,
/// which RFC 2046 builds on), where a value is a token or a quoted string; whitespace is
/// allowed around the `;` separators (tabs are control characters, which CloudEvents
/// strings may not hold).
pub fn check_media_type(text: &str) -> Result<(), String> {
    let token_end = |s: &str| s.bytes().position(|b| !is_token_char(b)).unwrap_or(s.len());
    let text = text.trim_matches(' ');
    let type_len = token_end(text);
    let rest = &text[type_len..];
    let Some(rest) = rest.strip_prefix('/').filter(|_| type_len > 0) else {
        return Err("it has no `type/subtype`".into());
    };
    let subtype_len = token_end(rest);
    if subtype_len == 0 {
        return Err("the subtype after `/` is empty".into());
    }
    let mut rest = rest[subtype_len..].trim_start_matches(' ');
    while !rest.is_empty() {
        let Some(after) = rest.strip_prefix(';') else {
            return Err(format!(
                "unexpected {:?} after the media type",
                rest.chars().next().unwrap_or_default()
            ));
        };
        let parameter = after.trim_start_matches(' ');
        let name_len = token_end(parameter);
        let Some(value) = parameter[name_len..]
            .strip_prefix('=')
            .filter(|_| name_len > 0)
        else {
            return Err("a parameter is not `name=value`".into());
        };
        let value_len = if value.starts_with('"') {
            quoted_string_len(value).ok_or(
                "a quoted parameter value is not closed, or holds more than printable ASCII",
            )?
        } else {
            token_end(value)
        };
        if value_len == 0 {
            return Err("a parameter value is empty".into());
        }
        rest = value[value_len..].trim_start_matches(' ');
    }
    Ok(())
}

/// The length of the quoted string (RFC 822 `quoted-string`, printable ASCII and
/// spaces, `\\` escaping the next one) at the start of `text`.
fn quoted_string_len(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let printable = |b: &u8| (b' '..=b'~').contains(b);
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => return Some(i + 1),
            b'\\' if bytes.get(i + 1).is_some_and(printable) => i += 2,
            b if b != b'\\' && printable(&b) => i += 1,
            _ => return None,
        }
    }
    None
}

/// RFC 3986 URI references, checked by their grammar.
mod uri {
    /// Checks a URI-reference (RFC 3986 §4.1); answers whether it has a scheme (then it
    /// is a URI, §3, possibly with a fragment), or why it is not a URI-reference.
    pub fn check_reference(text: &str) -> Result<bool, String> {
        if let Some(c) = text.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(format!(
                "{c:?} must be percent-encoded (a URI is printable ASCII)"
            ));
        }
        let (rest, fragment) = split_once_or(text, '#');
        if let Some(fragment) = fragment {
            check_chars("fragment", fragment, |b| {
                is_pchar(b) || b == b'/' || b == b'?'
            })?;
        }
        let (rest, query) = split_once_or(rest, '?');
        if let Some(query) = query {
            check_chars("query", query, |b| is_pchar(b) || b == b'/' || b == b'?')?;
        }
        let mut has_scheme = false;
        let mut rest = rest;
        let first_segment = &rest[..rest.find('/').unwrap_or(rest.len())];
        if let Some(colon) = first_segment.find(':') {
            let scheme = &rest[..colon];
            let valid = scheme
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic())
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
            if !valid {
                return Err(format!(
                    "{:?} is not a scheme, and a relative reference cannot have `:` in its first segment",
                    &scheme[..scheme.len().min(32)]
                ));
            }
            has_scheme = true;
            rest = &rest[colon + 1..];
        }
        let path = match rest.strip_prefix("//") {
            Some(after) => {
                let end = after.find('/').unwrap_or(after.len());
                check_authority(&after[..end])?;
                &after[end..]
            }
            None => rest,
        };
        check_chars("path", path, |b| is_pchar(b) || b == b'/')?;
        Ok(has_scheme)
    }

    fn split_once_or(text: &str, at: char) -> (&str, Option<&str>) {
        match text.split_once(at) {
            Some((before, after)) => (before, Some(after)),
            None => (text, None),
        }
    }

    /// `authority = [ userinfo "@" ] host [ ":" port ]`.
    fn check_authority(authority: &str) -> Result<(), String> {
        let (userinfo, host_port) = match authority.rsplit_once('@') {
            Some((userinfo, host_port)) => (Some(userinfo), host_port),
            None => (None, authority),
        };
        if let Some(userinfo) = userinfo {
            check_chars("user info", userinfo, |b| {
                is_unreserved(b) || is_sub_delim(b) || b == b':'
            })?;
        }
        let (host, port) = if host_port.starts_with('[') {
            let close = host_port
                .find(']')
                .ok_or("an IP literal host is missing its `]`")?;
            let literal = &host_port[1..close];
            let ok = !literal.is_empty()
                && (literal
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
                    || (literal.starts_with(['v', 'V'])
                        && literal
                            .bytes()
                            .all(|b| is_unreserved(b) || is_sub_delim(b) || b == b':')));
            if !ok {
                return Err("the IP literal host is not an IPv6 address".into());
            }
            let after = &host_port[close + 1..];
            match after.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None if after.is_empty() => ("", None),
                None => return Err("unexpected text after the IP literal host".into()),
            }
        } else {
            match host_port.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (host_port, None),
            }
        };
        check_chars("host", host, |b| is_unreserved(b) || is_sub_delim(b))?;
        if let Some(port) = port {
            if !port.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("the port {port:?} is not a number"));
            }
        }
        Ok(())
    }

    /// Every byte is allowed by `allowed` or starts a `%XX` escape.
    fn check_chars(part: &str, text: &str, allowed: impl Fn(u8) -> bool) -> Result<(), String> {
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let escape = bytes.get(i + 1..i + 3);
                if !escape.is_some_and(|e| e.iter().all(u8::is_ascii_hexdigit)) {
                    return Err(format!("the {part} has a `%` that is not a `%XX` escape"));
                }
                i += 3;
            } else if allowed(bytes[i]) {
                i += 1;
            } else {
                return Err(format!("the {part} may not contain {:?}", bytes[i] as char));
            }
        }
        Ok(())
    }

    fn is_unreserved(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"-._~".contains(&b)
    }

    fn is_sub_delim(b: u8) -> bool {
        b"!$&'()*+,;=".contains(&b)
    }

    fn is_pchar(b: u8) -> bool {
        is_unreserved(b) || is_sub_delim(b) || b == b':' || b == b'@'
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
        for bad in ["Upper", "has-dash", "", "type", "data"] {
            let mut a = attrs();
            a.extensions
                .insert(bad.into(), ExtensionValue::Boolean(true));
            assert!(a.validate().is_err(), "{bad}");
        }
    }

    fn invalid_attribute(a: &CloudEventAttributes) -> String {
        match a.validate() {
            Err(CloudEventError::InvalidAttribute { name, .. }) => name,
            other => panic!("expected an invalid attribute, got {other:?}"),
        }
    }

    #[test]
    fn long_extension_names_are_accepted() {
        // Spec, "Attribute Naming Convention": "MUST be at least one character in
        // length, and SHOULD NOT exceed 20 characters." A SHOULD is advice: a longer
        // name is valid; only the MUSTs (a-z, 0-9, at least one) are enforced.
        let mut a = attrs();
        a.extensions.insert(
            "abcdefghijklmnopqrstu".into(),
            ExtensionValue::Boolean(true),
        );
        assert_eq!(a.validate(), Ok(()));
        let mut a = attrs();
        a.extensions.insert(
            "abcdefghijklmnopqrstU".into(),
            ExtensionValue::Boolean(true),
        );
        assert!(matches!(
            a.validate(),
            Err(CloudEventError::InvalidExtensionName(_))
        ));
    }

    #[test]
    fn strings_may_not_hold_control_characters_or_noncharacters() {
        // Spec, "Type System", String: "The following characters are disallowed: the
        // "control characters" in the ranges U+0000-U+001F and U+007F-U+009F (both
        // ranges inclusive) [...] code points identified as noncharacters by Unicode."
        for bad in [
            "a\u{1}b",
            "\u{0}",
            "tab\there",
            "\u{7f}",
            "\u{9f}",
            "\u{fdd0}",
            "\u{fffe}",
            "\u{1ffff}",
        ] {
            let mut a = attrs();
            a.subject = Some(bad.into());
            assert_eq!(invalid_attribute(&a), "subject", "{bad:?}");
            let mut a = attrs();
            a.extensions
                .insert("note".into(), ExtensionValue::String(bad.into()));
            assert_eq!(invalid_attribute(&a), "note", "{bad:?}");
        }
        let mut a = attrs();
        a.id = "id\u{85}".into();
        assert_eq!(invalid_attribute(&a), "id");
        let mut a = attrs();
        a.subject = Some("caf\u{e9} \u{a0}\u{1f600} \u{fdf0}".into());
        assert_eq!(a.validate(), Ok(()));
    }

    #[test]
    fn datacontenttype_is_an_rfc_2046_media_type() {
        // Spec, datacontenttype: "If present, MUST adhere to the format specified in
        // RFC 2046".
        for good in [
            "application/json",
            "text/plain; charset=utf-8",
            "TEXT/Plain;CharSet=\"utf-8\"",
            "application/vnd.apache.thrift.binary",
            "multipart/form-data; boundary=\"a b;c\"",
            "application/cloudevents+json ; charset=UTF-8 ",
        ] {
            let mut a = attrs();
            a.datacontenttype = Some(good.into());
            assert_eq!(a.validate(), Ok(()), "{good}");
        }
        for bad in [
            "xyz",
            "application/",
            "/json",
            "application/json;",
            "text/plain; charset",
            "text/plain; charset=",
            "text/plain; charset=\"utf-8",
            "application/json extra",
            "app lication/json",
        ] {
            let mut a = attrs();
            a.datacontenttype = Some(bad.into());
            assert_eq!(invalid_attribute(&a), "datacontenttype", "{bad}");
        }
    }

    #[test]
    fn dataschema_is_an_absolute_uri_and_source_a_uri_reference() {
        // Spec, dataschema: "Type: `URI`" — "`URI` - Absolute uniform resource
        // identifier." The spec's JSON schema (formats/cloudevents.json) gives it
        // `"format": "uri"`, RFC 3986's URI, so a fragment is accepted.
        for good in [
            "https://example.com/schemas/order",
            "urn:example:order:v1",
            "https://example.com/schema.json#/definitions/order",
            "http://[::1]:8080/s?v=2",
        ] {
            let mut a = attrs();
            a.dataschema = Some(good.into());
            assert_eq!(a.validate(), Ok(()), "{good}");
        }
        for bad in [
            "/relative/schema",
            "schema.json",
            "https://example.com/a b",
            "https://example.com/%zz",
            "1http://example.com",
            "https://example.com/#a#b",
            "https://exa<mple>.com/",
            "https://example.com:port/",
        ] {
            let mut a = attrs();
            a.dataschema = Some(bad.into());
            assert_eq!(invalid_attribute(&a), "dataschema", "{bad}");
        }
        // Spec, source: "Type: `URI-reference`"; the JSON format's examples include
        // "/mycontext" and the schema's "cloudevents/spec/pull/123".
        for good in [
            "/mycontext",
            "cloudevents/spec/pull/123",
            "mailto:cncf-wg-serverless@lists.cncf.io",
            "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66",
            "https://github.com/cloudevents",
            "//example.com/x",
            "/sensors/tn-1234567/alerts?x=1#top",
        ] {
            let mut a = attrs();
            a.source = good.into();
            assert_eq!(a.validate(), Ok(()), "{good}");
        }
        for bad in ["/a b", "/caf\u{e9}", "/50%", "1a:b", "/x#y#z", "\"quoted\""] {
            let mut a = attrs();
            a.source = bad.into();
            assert_eq!(invalid_attribute(&a), "source", "{bad}");
        }
    }
}
