//! The payload checks every way in runs (`herald_core::check_payload`), a hand-written
//! scanner, against serde_json on any text. On text the server's JSON parser accepts:
//! the check passes only when serde_json can read the text back into a `Value` and it
//! has no duplicate member names; a refusal is never a syntax error; and a refusal names
//! a problem the text has. On any other text it only must not panic.
#![no_main]

use std::collections::HashSet;
use std::fmt;

use herald_core::{check_payload, PayloadError};
use libfuzzer_sys::fuzz_target;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let checked = check_payload(text);
    if serde_json::from_str::<&RawValue>(text).is_err() {
        return;
    }
    let readable = serde_json::from_str::<Value>(text);
    // `None` when serde_json cannot tell (it stops at its depth limit first).
    let duplicates = match serde_json::from_str::<NoDuplicates>(text) {
        Ok(_) => Some(false),
        Err(e) if e.to_string().starts_with(DUPLICATE) => Some(true),
        Err(_) => None,
    };
    match &checked {
        // Known and reported: serde_json without its `float_roundtrip` feature may parse
        // a number just below f64::MAX (`1.7976931348623158e308`) as out of range,
        // where a correctly rounding parser, like `check_payload`'s, reads f64::MAX.
        Ok(())
            if readable
                .as_ref()
                .is_err_and(|e| e.to_string().starts_with("number out of range"))
                && numbers(text)
                    .iter()
                    .all(|n| n.parse::<f64>().is_ok_and(f64::is_finite)) => {}
        Ok(()) => {
            assert!(
                readable.is_ok(),
                "accepted, but serde_json cannot read it back: {:?}",
                readable.err()
            );
            assert_ne!(
                duplicates,
                Some(true),
                "accepted with a duplicate member name"
            );
        }
        Err(PayloadError::Syntax { .. }) => panic!("valid JSON refused as a syntax error"),
        Err(PayloadError::DuplicateName { .. }) => {
            assert_ne!(duplicates, Some(false), "{checked:?}")
        }
        Err(PayloadError::TooDeep { limit, .. }) => {
            assert!(nesting(text) > *limit, "{checked:?}")
        }
        Err(PayloadError::NumberOutOfRange { .. }) => assert!(
            numbers(text)
                .iter()
                .any(|n| !n.parse::<f64>().is_ok_and(f64::is_finite)),
            "{checked:?}, yet every number fits"
        ),
        Err(PayloadError::LoneSurrogate { .. }) => {
            assert!(readable.is_err(), "{checked:?}, yet serde_json reads it")
        }
    }
    if duplicates == Some(true) {
        assert!(checked.is_err(), "a duplicate member name, yet accepted");
    }
});

const DUPLICATE: &str = "duplicate member name";

/// The deepest nesting serde_json reads (its recursion limit). Herald's limit stays
/// below it, so whatever `check_payload` accepts, serde_json reads.
const SERDE_JSON_MAX_DEPTH: usize = 127;
const _: () = assert!(herald_core::json::MAX_JSON_DEPTH < SERDE_JSON_MAX_DEPTH);

/// The deepest nesting of arrays and objects, counting brackets outside strings.
fn nesting(text: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0, false, false);
    for byte in text.bytes() {
        match (in_string, escaped, byte) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (false, _, b'"') => in_string = true,
            (false, _, b'[' | b'{') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (false, _, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// The number tokens of JSON text: runs of number characters outside strings that
/// start like a number.
fn numbers(text: &str) -> Vec<String> {
    let (mut in_string, mut escaped) = (false, false);
    let mut tokens = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        if matches!(c, '0'..='9' | '-' | '+' | '.' | 'e' | 'E') {
            current.push(c);
            continue;
        }
        tokens.push(std::mem::take(&mut current));
        in_string = c == '"';
    }
    tokens.push(current);
    tokens.retain(|t| t.starts_with(|c: char| c == '-' || c.is_ascii_digit()));
    tokens
}

/// Reads any JSON, failing on an object with a member name twice (names compared after
/// unescaping, as a consumer sees them).
struct NoDuplicates;

impl<'de> Deserialize<'de> for NoDuplicates {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NoDuplicatesVisitor)
    }
}

struct NoDuplicatesVisitor;

impl<'de> Visitor<'de> for NoDuplicatesVisitor {
    type Value = NoDuplicates;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NoDuplicates, A::Error> {
        let mut names = HashSet::new();
        while let Some(name) = map.next_key::<String>()? {
            if !names.insert(name) {
                return Err(serde::de::Error::custom(DUPLICATE));
            }
            map.next_value::<NoDuplicates>()?;
        }
        Ok(NoDuplicates)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NoDuplicates, A::Error> {
        while seq.next_element::<NoDuplicates>()?.is_some() {}
        Ok(NoDuplicates)
    }

    fn visit_bool<E>(self, _: bool) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_i64<E>(self, _: i64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_u64<E>(self, _: u64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_f64<E>(self, _: f64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_str<E>(self, _: &str) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
    fn visit_unit<E>(self) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates)
    }
}
