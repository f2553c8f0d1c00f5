//! Checks on client JSON that the JSON grammar allows but that Herald refuses, because
//! the payload is stored as the text it arrived as and read later by parsers that do not
//! all agree on it:
//!
//! - **depth**: more than [`MAX_JSON_DEPTH`] nested arrays and objects. Many parsers
//!   recurse (serde_json stops at 127, others overflow their stack), so a deeper payload
//!   could be stored but not read by the consumers it is for;
//! - **numbers that overflow a 64-bit float** (`1e400`): most parsers turn them into
//!   infinity, which no JSON serializer can write back, or fail;
//! - **lone surrogate escapes** (`"\ud800"`): not a Unicode character, so not valid in
//!   UTF-8 text (RFC 8259 §8.2); strict parsers reject them, others replace them;
//! - **duplicate member names** in one object: RFC 8259 §4 says names "SHOULD be
//!   unique", and parsers disagree on duplicates (first wins, last wins, error), so two
//!   consumers could read two different payloads.
//!
//! [`check_payload`] runs on every way in (HTTP, CloudEvents, JSON-RPC, the NATS
//! bridge): one pass over the text, iterative (a deep input cannot overflow the stack),
//! allocating only for the member names of the objects it is inside.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The deepest nesting of arrays and objects a payload may have (the payload object
/// itself is level 1), and the most [`set_max_depth`] allows. serde_json reads at most
/// 127 levels (a fuzz run found that 128 `[` fail there), and a payload is read inside
/// what carries it — the event object, a query's array, a JSON-RPC result, a CloudEvent
/// `data` wrapper — so 100 leaves every reader room.
pub const MAX_JSON_DEPTH: usize = 100;

/// The depth limit [`check_payload`] applies: [`MAX_JSON_DEPTH`] unless lowered.
static MAX_DEPTH: AtomicUsize = AtomicUsize::new(MAX_JSON_DEPTH);

/// Lowers the depth limit of [`check_payload`] for the whole process (the server's
/// `--max-json-depth`); values are clamped to `1..=MAX_JSON_DEPTH`. Returns the limit set.
pub fn set_max_depth(depth: usize) -> usize {
    let depth = depth.clamp(1, MAX_JSON_DEPTH);
    MAX_DEPTH.store(depth, Ordering::Relaxed);
    depth
}

/// The depth limit [`check_payload`] applies now.
pub fn max_depth() -> usize {
    MAX_DEPTH.load(Ordering::Relaxed)
}

/// Objects with more members than this check names with a hash set instead of a scan.
const LINEAR_KEY_SCAN: usize = 16;

/// What is wrong with a payload. Messages complete a sentence that starts with the
/// payload's name: "`payload` nests deeper than 100 levels (at byte 300)".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("nests deeper than {limit} levels of arrays and objects (at byte {offset})")]
    TooDeep { limit: usize, offset: usize },
    #[error("has the number {number} (at byte {offset}), which does not fit a 64-bit float")]
    NumberOutOfRange { number: String, offset: usize },
    #[error("has the escape {escape} (at byte {offset}), a lone UTF-16 surrogate that is not a Unicode character")]
    LoneSurrogate { escape: String, offset: usize },
    #[error("has the member name {name:?} twice in one object (at byte {offset})")]
    DuplicateName { name: String, offset: usize },
    #[error("is not valid JSON (at byte {offset})")]
    Syntax { offset: usize },
}

impl PayloadError {
    /// A short name of the problem, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            PayloadError::TooDeep { .. } => "too_deep",
            PayloadError::NumberOutOfRange { .. } => "number_out_of_range",
            PayloadError::LoneSurrogate { .. } => "lone_surrogate",
            PayloadError::DuplicateName { .. } => "duplicate_name",
            PayloadError::Syntax { .. } => "syntax",
        }
    }
}

/// Checks JSON text that a parser has already accepted (a `RawValue`) against the rules
/// above, with the depth limit [`max_depth`]. On text that is not JSON it never
/// panics, but it may miss problems or report [`PayloadError::Syntax`].
pub fn check_payload(raw: &str) -> Result<(), PayloadError> {
    check_payload_with_depth(raw, max_depth())
}

/// [`check_payload`] with another depth limit.
pub fn check_payload_with_depth(raw: &str, max_depth: usize) -> Result<(), PayloadError> {
    Checker::new(raw, max_depth).run()
}

/// One array or object the scan is inside.
struct Frame<'a> {
    is_object: bool,
    /// Where this object's member names start in `Checker::names`.
    names_start: usize,
    /// The names, once the object has more than [`LINEAR_KEY_SCAN`] of them.
    name_set: Option<HashSet<Cow<'a, str>>>,
}

struct Checker<'a> {
    text: &'a str,
    max_depth: usize,
    frames: Vec<Frame<'a>>,
    /// Member names of the open objects, innermost last (small objects only).
    names: Vec<Cow<'a, str>>,
}

impl<'a> Checker<'a> {
    fn new(text: &'a str, max_depth: usize) -> Self {
        Checker {
            text,
            max_depth,
            frames: Vec::new(),
            names: Vec::new(),
        }
    }

    fn run(mut self) -> Result<(), PayloadError> {
        let bytes = self.text.as_bytes();
        let mut i = 0;
        // Whether the next string is a member name.
        let mut expect_name = false;
        while i < bytes.len() {
            match bytes[i] {
                open @ (b'{' | b'[') => {
                    if self.frames.len() >= self.max_depth {
                        return Err(PayloadError::TooDeep {
                            limit: self.max_depth,
                            offset: i,
                        });
                    }
                    let is_object = open == b'{';
                    self.frames.push(Frame {
                        is_object,
                        names_start: self.names.len(),
                        name_set: None,
                    });
                    expect_name = is_object;
                    i += 1;
                }
                b'}' | b']' => {
                    let frame = self
                        .frames
                        .pop()
                        .ok_or(PayloadError::Syntax { offset: i })?;
                    self.names.truncate(frame.names_start);
                    expect_name = false;
                    i += 1;
                }
                b',' => {
                    expect_name = self.frames.last().is_some_and(|f| f.is_object);
                    i += 1;
                }
                b':' => {
                    expect_name = false;
                    i += 1;
                }
                b'"' => {
                    let (end, escaped) = self.string_end(i)?;
                    if expect_name {
                        let inner = &self.text[i + 1..end - 1];
                        let name = if escaped {
                            Cow::Owned(unescape(inner).ok_or(PayloadError::Syntax { offset: i })?)
                        } else {
                            Cow::Borrowed(inner)
                        };
                        self.add_name(name, i)?;
                        expect_name = false;
                    }
                    i = end;
                }
                b'-' | b'0'..=b'9' => i = self.number_end(i)?,
                // Whitespace and the letters of `true`, `false`, `null`.
                _ => i += 1,
            }
        }
        if self.frames.is_empty() {
            Ok(())
        } else {
            Err(PayloadError::Syntax { offset: i })
        }
    }

    /// The index just past the string starting at `start` (a `"`), and whether it has
    /// escapes. Checks `\u` escapes for lone surrogates.
    fn string_end(&self, start: usize) -> Result<(usize, bool), PayloadError> {
        let bytes = self.text.as_bytes();
        let mut i = start + 1;
        let mut escaped = false;
        loop {
            match bytes.get(i) {
                None => return Err(PayloadError::Syntax { offset: start }),
                Some(b'"') => return Ok((i + 1, escaped)),
                Some(b'\\') => {
                    escaped = true;
                    if bytes.get(i + 1) == Some(&b'u') {
                        i = self.unicode_escape_end(i)?;
                    } else {
                        i += 2;
                    }
                }
                Some(_) => i += 1,
            }
        }
    }

    /// Checks the `\uXXXX` escape at `i` (and its low half when it is a high surrogate);
    /// returns the index just past it.
    fn unicode_escape_end(&self, i: usize) -> Result<usize, PayloadError> {
        let unit = hex4(self.text, i + 2).ok_or(PayloadError::Syntax { offset: i })?;
        let lone = || PayloadError::LoneSurrogate {
            escape: self.text[i..i + 6].to_owned(),
            offset: i,
        };
        match unit {
            0xD800..=0xDBFF => {
                let low = (self.text.as_bytes().get(i + 6..i + 8) == Some(b"\\u"))
                    .then(|| hex4(self.text, i + 8))
                    .flatten();
                match low {
                    Some(0xDC00..=0xDFFF) => Ok(i + 12),
                    _ => Err(lone()),
                }
            }
            0xDC00..=0xDFFF => Err(lone()),
            _ => Ok(i + 6),
        }
    }

    /// The index just past the number starting at `start`; refuses numbers that
    /// overflow an `f64`.
    fn number_end(&self, start: usize) -> Result<usize, PayloadError> {
        let bytes = self.text.as_bytes();
        let mut end = start;
        let mut integer_digits = 0usize;
        let mut in_integer = true;
        let mut has_exponent = false;
        while let Some(&b) = bytes.get(end) {
            match b {
                b'0'..=b'9' => integer_digits += usize::from(in_integer),
                b'-' | b'+' => {}
                b'.' => in_integer = false,
                b'e' | b'E' => {
                    in_integer = false;
                    has_exponent = true;
                }
                _ => break,
            }
            end += 1;
        }
        // Up to 308 integer digits and no exponent is always below f64::MAX (~1.8e308):
        // the common case needs no float parsing.
        if has_exponent || integer_digits > 308 {
            let number = &self.text[start..end];
            match number.parse::<f64>() {
                Ok(value) if value.is_finite() => {}
                Ok(_) => {
                    return Err(PayloadError::NumberOutOfRange {
                        number: number.chars().take(40).collect(),
                        offset: start,
                    })
                }
                Err(_) => return Err(PayloadError::Syntax { offset: start }),
            }
        }
        Ok(end)
    }

    /// Records a member name of the innermost object; a repeated one is an error.
    fn add_name(&mut self, name: Cow<'a, str>, offset: usize) -> Result<(), PayloadError> {
        let Some(frame) = self.frames.last_mut() else {
            return Err(PayloadError::Syntax { offset });
        };
        let duplicate = |name: Cow<'a, str>| PayloadError::DuplicateName {
            name: name.chars().take(64).collect(),
            offset,
        };
        if let Some(set) = &mut frame.name_set {
            if set.contains(&name) {
                return Err(duplicate(name));
            }
            set.insert(name);
            return Ok(());
        }
        let known = &self.names[frame.names_start..];
        if known.contains(&name) {
            return Err(duplicate(name));
        }
        if known.len() >= LINEAR_KEY_SCAN {
            let mut set: HashSet<Cow<'a, str>> = self.names.drain(frame.names_start..).collect();
            set.insert(name);
            frame.name_set = Some(set);
        } else {
            self.names.push(name);
        }
        Ok(())
    }
}

/// The four hex digits at `at`, as a number.
fn hex4(text: &str, at: usize) -> Option<u32> {
    let digits = text.get(at..at + 4)?;
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(digits, 16).ok()
}

/// The text of a JSON string's contents with its escapes decoded (surrogate pairs were
/// checked before).
fn unescape(inner: &str) -> Option<String> {
    let mut out = String::with_capacity(inner.len());
    let mut rest = inner;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let escape = rest.as_bytes().get(at + 1)?;
        let used = match escape {
            b'u' => {
                let unit = hex4(rest, at + 2)?;
                if (0xD800..=0xDBFF).contains(&unit) {
                    let low = hex4(rest, at + 8)?;
                    out.push(char::from_u32(
                        0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00),
                    )?);
                    12
                } else {
                    out.push(char::from_u32(unit)?);
                    6
                }
            }
            other => {
                out.push(match other {
                    b'"' => '"',
                    b'\\' => '\\',
                    b'/' => '/',
                    b'b' => '\u{8}',
                    b'f' => '\u{c}',
                    b'n' => '\n',
                    b'r' => '\r',
                    b't' => '\t',
                    _ => return None,
                });
                2
            }
        };
        rest = rest.get(at + used..)?;
    }
    out.push_str(rest);
    Some(out)
}

/// Largest whole number a JSON float holds exactly (2^53): past it, `9007199254740993.0`
/// already reads as its neighbour.
const EXACT_FLOAT_INTEGER: f64 = 9_007_199_254_740_992.0;

/// A JSON number that is a whole number, as an integer: `5` and `5.0` alike (JSON, and
/// JSON Schema's `integer`, do not tell them apart). A float is taken up to 2^53 in size,
/// the whole numbers it holds exactly.
pub fn whole_number(number: &serde_json::Number) -> Option<i64> {
    number.as_i64().or_else(|| {
        number
            .as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() <= EXACT_FLOAT_INTEGER)
            .map(|f| f as i64)
    })
}

/// [`whole_number`] for counts, sizes and positions: 0 or more.
pub fn non_negative_whole_number(number: &serde_json::Number) -> Option<u64> {
    number.as_u64().or_else(|| {
        number
            .as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= EXACT_FLOAT_INTEGER)
            .map(|f| f as u64)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn whole_numbers_are_read_as_integers_written_either_way() {
        use super::{non_negative_whole_number as natural, whole_number as whole};
        let n = |text: &str| -> serde_json::Number { serde_json::from_str(text).unwrap() };
        assert_eq!(whole(&n("4")), Some(4));
        assert_eq!(whole(&n("4.0")), Some(4));
        assert_eq!(whole(&n("-2147483648.0")), Some(-2147483648));
        assert_eq!(whole(&n("-9223372036854775808")), Some(i64::MIN));
        assert_eq!(whole(&n("9007199254740992.0")), Some(9_007_199_254_740_992));
        assert_eq!(whole(&n("9007199254740994.0")), None);
        assert_eq!(whole(&n("4.5")), None);
        assert_eq!(whole(&n("1e300")), None);
        assert_eq!(natural(&n("18446744073709551615")), Some(u64::MAX));
        assert_eq!(natural(&n("106.0")), Some(106));
        assert_eq!(natural(&n("-0.0")), Some(0));
        assert_eq!(natural(&n("-1")), None);
        assert_eq!(natural(&n("-1.0")), None);
        assert_eq!(natural(&n("0.5")), None);
    }

    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn ordinary_payloads_pass() {
        for ok in [
            r#"{}"#,
            r#"{"a": 1, "b": [true, false, null], "c": {"a": 2}}"#,
            r#"{"n": [-0, 1.5e10, 1E-400, 12345678901234567890123, -1.7976931348623157e308]}"#,
            r#"{"s": "\ud83d\ude00 \u00e9 \n \" \\ \u0000", "\ud83d\ude00": 1}"#,
            r#"{"a": {"x": 1}, "b": {"x": 1}, "c": [{"x": 1}, {"x": 2}]}"#,
            r#"{"e1": "1e400 is only text", "a\"b": 1, "a\\b": 2}"#,
        ] {
            assert_eq!(check_payload(ok), Ok(()), "{ok}");
        }
        assert_eq!(check_payload(&nested(MAX_JSON_DEPTH)), Ok(()));
    }

    #[test]
    fn depth_limit_is_exact_and_deep_input_does_not_overflow_the_stack() {
        assert!(matches!(
            check_payload(&nested(MAX_JSON_DEPTH + 1)),
            Err(PayloadError::TooDeep {
                limit: 100,
                offset: 100
            })
        ));
        let deep = format!("{}{}", "{\"a\":".repeat(1_000_000), "}".repeat(1_000_000));
        assert!(matches!(
            check_payload(&deep),
            Err(PayloadError::TooDeep { .. })
        ));
        assert_eq!(check_payload_with_depth(&nested(1000), 1000), Ok(()));
    }

    #[test]
    fn numbers_that_overflow_a_float_are_refused() {
        for bad in ["1e400", "-1e400", "1.8e308", "2E+308"] {
            let err = check_payload(&format!(r#"{{"n": [1, {bad}]}}"#)).unwrap_err();
            assert!(
                matches!(&err, PayloadError::NumberOutOfRange { number, offset: 10 } if number == bad),
                "{bad}: {err:?}"
            );
        }
        let long = format!(r#"{{"n": 1{}}}"#, "0".repeat(400));
        assert!(matches!(
            check_payload(&long),
            Err(PayloadError::NumberOutOfRange { .. })
        ));
        let fine = format!(r#"{{"n": 1{}.5}}"#, "0".repeat(300));
        assert_eq!(check_payload(&fine), Ok(()));
    }

    #[test]
    fn lone_surrogates_are_refused() {
        for bad in [
            r#"{"s": "\ud800"}"#,
            r#"{"s": "x\uDBFFy"}"#,
            r#"{"s": "\udc00"}"#,
            r#"{"s": "\ud800\u0041"}"#,
            r#"{"\ud800": 1}"#,
        ] {
            let err = check_payload(bad).unwrap_err();
            assert_eq!(err.kind(), "lone_surrogate", "{bad}");
        }
        let err = check_payload(r#"{"s": "\ud800"}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            r"has the escape \ud800 (at byte 7), a lone UTF-16 surrogate that is not a Unicode character"
        );
    }

    #[test]
    fn duplicate_names_are_refused_also_when_escaped_or_in_large_objects() {
        for bad in [
            r#"{"a": 1, "a": 2}"#,
            r#"{"a": 1, "\u0061": 2}"#,
            r#"{"x": {"k": [], "k": {}}}"#,
            r#"[{"a": 1}, {"b": 1, "c": {"d": 1}, "b": 2}]"#,
        ] {
            let err = check_payload(bad).unwrap_err();
            assert_eq!(err.kind(), "duplicate_name", "{bad}");
        }
        let wide: Vec<String> = (0..100).map(|n| format!("\"k{n}\": {n}")).collect();
        let wide_ok = format!("{{{}}}", wide.join(","));
        assert_eq!(check_payload(&wide_ok), Ok(()));
        let wide_bad = format!("{{{}, \"k57\": 0}}", wide.join(","));
        assert_eq!(
            check_payload(&wide_bad).unwrap_err(),
            PayloadError::DuplicateName {
                name: "k57".into(),
                offset: wide_ok.len() + 1
            }
        );
    }

    #[test]
    fn text_that_is_not_json_never_panics() {
        for junk in [
            "",
            "{",
            "}",
            "[\"",
            "\"\\u12",
            "\"\\ud800\\u",
            "{\"a\\",
            "-",
            "1e",
            "{\"a\":1,",
            "\"\\ud800\\udc0",
            "\\u",
            "]]]",
        ] {
            let _ = check_payload(junk);
        }
    }

    /// The check runs on every publish: it must cost no more than the parse that
    /// precedes it. Measured against serde_json reading the same text into a
    /// `RawValue` (what the handlers do), in the same build.
    #[test]
    fn costs_about_as_much_as_the_parse_before_it() {
        let small = r#"{"order_id": 42, "customer": {"id": "c-1029", "name": "Ada Lovelace", "email": "ada@example.com"}, "items": [{"sku": "A-1", "qty": 2, "price": 19.99}, {"sku": "B-7", "qty": 1, "price": 5.5}], "total": 45.48, "currency": "EUR", "note": "leave at the door \u00e9", "gift": false, "channel": "web-shop"}"#;
        let item =
            r#"{"sku": "SKU-000123", "qty": 3, "price": 12.75, "tags": ["a", "b"], "ok": true}"#;
        let mut large = String::from(r#"{"items": ["#);
        while large.len() < 64 * 1024 - item.len() {
            large.push_str(item);
            large.push(',');
        }
        large.push_str(item);
        large.push_str("]}");
        for (name, text, rounds) in [("~300 B", small, 20_000), ("64 KiB", large.as_str(), 100)] {
            let time = |f: &dyn Fn()| {
                let start = std::time::Instant::now();
                for _ in 0..rounds {
                    f();
                }
                start.elapsed() / rounds
            };
            let check = time(&|| check_payload(std::hint::black_box(text)).unwrap());
            let parse = time(&|| {
                serde_json::from_str::<&serde_json::value::RawValue>(std::hint::black_box(text))
                    .unwrap();
            });
            println!(
                "{name} ({} bytes): check {check:?}, parse {parse:?}",
                text.len()
            );
            assert!(
                check < parse * 3,
                "{name}: check {check:?} vs parse {parse:?}"
            );
        }
    }
}
