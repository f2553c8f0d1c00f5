//! W3C Trace Context: the `traceparent` and `tracestate` an event was published with.
//!
//! A publisher may send them (HTTP headers, or the CloudEvents distributed-tracing
//! extension); the hub stores them with the event and hands them on wherever the event
//! goes (NATS headers, webhook requests, the CloudEvent read back). Parsing follows the
//! spec (<https://www.w3.org/TR/trace-context/>): an invalid `traceparent` is ignored,
//! never refused, and a `tracestate` is read only beside a valid `traceparent`.

use std::fmt;

/// The `sampled` bit of `trace-flags`.
pub const FLAG_SAMPLED: u8 = 0x01;

/// Longest `tracestate` kept (the spec asks that at least 512 characters propagate).
pub const MAX_TRACESTATE: usize = 512;

/// A valid trace context: the position in a distributed trace an event continues.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// The `parent-id`: the span (operation) the event's next hop is a child of.
    pub parent_id: [u8; 8],
    pub flags: u8,
    /// Vendor entries, validated and trimmed; `None` when absent or empty.
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// Reads a `traceparent` and its `tracestate`. `None` when `traceparent` is not a
    /// valid one: then the spec says to ignore it (and not to read `tracestate`). An
    /// invalid `tracestate` beside a valid `traceparent` is dropped alone.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let (trace_id, parent_id, flags) = parse_traceparent(traceparent.trim())?;
        Some(TraceContext {
            trace_id,
            parent_id,
            flags,
            tracestate: tracestate.and_then(parse_tracestate),
        })
    }

    /// The `traceparent` value (version `00`, lowercase hex).
    pub fn traceparent(&self) -> String {
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        push_hex(&mut out, &self.trace_id);
        out.push('-');
        push_hex(&mut out, &self.parent_id);
        out.push('-');
        push_hex(&mut out, &[self.flags]);
        out
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        let mut out = String::with_capacity(32);
        push_hex(&mut out, &self.trace_id);
        out
    }

    pub fn sampled(&self) -> bool {
        self.flags & FLAG_SAMPLED != 0
    }

    /// The same trace continued by the operation `span_id` (the spec's "Update
    /// parent-id" mutation), with its recording decision; `tracestate` is carried over.
    pub fn continued(&self, span_id: [u8; 8], sampled: bool) -> Self {
        TraceContext {
            trace_id: self.trace_id,
            parent_id: span_id,
            flags: if sampled { FLAG_SAMPLED } else { 0 },
            tracestate: self.tracestate.clone(),
        }
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceContext({}", self.traceparent())?;
        if let Some(state) = &self.tracestate {
            write!(f, ", {state:?}")?;
        }
        f.write_str(")")
    }
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
}

/// Lowercase hex only: the spec's `HEXDIGLC`.
fn hex_lc<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

fn parse_traceparent(text: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let b = text.as_bytes();
    // version "-" trace-id "-" parent-id "-" trace-flags: 55 characters for version 00.
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let [version] = hex_lc::<1>(&b[..2])?;
    if version == 0xff {
        return None;
    }
    // Version 00 is exactly 55 characters; a higher version may add fields after a dash.
    if version == 0 && b.len() != 55 || version != 0 && b.len() > 55 && b[55] != b'-' {
        return None;
    }
    let trace_id = hex_lc::<16>(&b[3..35])?;
    let parent_id = hex_lc::<8>(&b[36..52])?;
    let [flags] = hex_lc::<1>(&b[53..55])?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    // Of a higher version only the sampled bit is understood.
    let flags = if version == 0 {
        flags
    } else {
        flags & FLAG_SAMPLED
    };
    Some((trace_id, parent_id, flags))
}

/// A `tracestate` value checked against the spec's grammar, members trimmed and empty
/// ones dropped; `None` when it is empty or invalid (then it is discarded whole). Longer
/// than [`MAX_TRACESTATE`], whole entries are dropped: those over 128 characters first,
/// then from the end, as the spec says truncation must go.
pub fn parse_tracestate(text: &str) -> Option<String> {
    let mut members: Vec<&str> = Vec::new();
    for member in text.split(',') {
        let member = member.trim_matches([' ', '\t']);
        if member.is_empty() {
            continue;
        }
        let (key, value) = member.split_once('=')?;
        if !valid_key(key) || !valid_value(value) {
            return None;
        }
        if members
            .iter()
            .any(|m| m.split_once('=').map(|(k, _)| k) == Some(key))
        {
            return None;
        }
        members.push(member);
    }
    if members.is_empty() || members.len() > 32 {
        return None;
    }
    let len = |members: &[&str]| members.iter().map(|m| m.len() + 1).sum::<usize>() - 1;
    if len(&members) > MAX_TRACESTATE {
        members.retain(|m| m.len() <= 128);
        while !members.is_empty() && len(&members) > MAX_TRACESTATE {
            members.pop();
        }
        if members.is_empty() {
            return None;
        }
    }
    Some(members.join(","))
}

/// `key = ( lcalpha / DIGIT ) 0*255 ( keychar )`, or the multi-tenant form
/// `tenant@system`, which the same characters cover.
fn valid_key(key: &str) -> bool {
    let b = key.as_bytes();
    !b.is_empty()
        && b.len() <= 256
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-*/@".contains(&c))
}

/// `value = 0*255(chr) nblk-chr`: printable ASCII but `,` and `=`, not ending in a space.
fn valid_value(value: &str) -> bool {
    let b = value.as_bytes();
    !b.is_empty()
        && b.len() <= 256
        && b.last() != Some(&b' ')
        && b.iter()
            .all(|&c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=')
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_round_trips() {
        let tc = TraceContext::parse(VALID, None).unwrap();
        assert_eq!(tc.traceparent(), VALID);
        assert_eq!(tc.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(tc.sampled());
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!TraceContext::parse(unsampled, None).unwrap().sampled());
        // Whitespace around a header value is not part of it.
        assert!(TraceContext::parse(&format!(" {VALID} "), None).is_some());
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        // "If the `trace-id` value is invalid (for example if it contains non-allowed
        // characters or all zeros), vendors MUST ignore the `traceparent`."
        // "Vendors MUST ignore the `traceparent` when the `parent-id` is invalid (for
        // example, if it contains non-lowercase hex characters)."
        // "Version `ff` is invalid."
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
        ] {
            assert_eq!(TraceContext::parse(bad, Some("rojo=1")), None, "{bad:?}");
        }
    }

    #[test]
    fn higher_versions_are_read_for_what_version_00_knows() {
        // "If a higher version is detected, the implementation SHOULD try to parse it"
        // ... "Vendors MUST check that the 2 characters are either at the end of the
        // string or followed by a dash."
        let tc = TraceContext::parse(
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-the-future-holds",
            None,
        )
        .unwrap();
        // "Vendors MUST use these fields to construct the new `traceparent` field
        // according to the highest version of the specification known".
        assert_eq!(tc.traceparent(), VALID);
        assert!(TraceContext::parse(
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            None
        )
        .is_none());
    }

    #[test]
    fn tracestate_is_validated_apart() {
        // "failure to parse `tracestate` MUST NOT affect the parsing of `traceparent`."
        let tc = TraceContext::parse(VALID, Some("not a list member")).unwrap();
        assert_eq!(tc.tracestate, None);
        let tc = TraceContext::parse(VALID, Some(" rojo=00f067aa0ba902b7 ,, congo=t61rcWkgMzE"))
            .unwrap();
        assert_eq!(
            tc.tracestate.as_deref(),
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
        );
        // "Vendors MUST accept empty `tracestate` headers".
        assert_eq!(
            TraceContext::parse(VALID, Some("")).unwrap().tracestate,
            None
        );
        assert_eq!(
            parse_tracestate("tenant@vendor=x"),
            Some("tenant@vendor=x".into())
        );
        assert_eq!(parse_tracestate("Upper=x"), None);
        assert_eq!(parse_tracestate("a=b,a=c"), None);
        assert_eq!(parse_tracestate("a=b=c"), None);
        // "trailing spaces are considered to be optional whitespace characters not part
        // of the value"; leading ones are the value's.
        assert_eq!(parse_tracestate("a=trailing "), Some("a=trailing".into()));
        assert_eq!(parse_tracestate("a= lead"), Some("a= lead".into()));
        assert_eq!(parse_tracestate("a=tab\there"), None);
        let many = (0..33)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(parse_tracestate(&many), None);
    }

    #[test]
    fn long_tracestates_lose_whole_entries() {
        // "Entries larger than `128` characters long SHOULD be removed first. Then
        // entries SHOULD be removed starting from the end of `tracestate`."
        let big = format!("big={}", "x".repeat(200));
        let small: Vec<String> = (0..30)
            .map(|i| format!("k{i:02}={}", "y".repeat(12)))
            .collect();
        let text = format!("{},{big},{}", small[..15].join(","), small[15..].join(","));
        let kept = parse_tracestate(&text).unwrap();
        assert!(kept.len() <= MAX_TRACESTATE);
        assert!(!kept.contains("big="));
        assert!(kept.starts_with("k00="));
        assert_eq!(kept, small[..kept.split(',').count()].join(","));
    }

    #[test]
    fn continuing_updates_the_parent_id_only() {
        let tc = TraceContext::parse(VALID, Some("rojo=1")).unwrap();
        let next = tc.continued([1, 2, 3, 4, 5, 6, 7, 8], true);
        assert_eq!(
            next.traceparent(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-01"
        );
        assert_eq!(next.tracestate.as_deref(), Some("rojo=1"));
    }
}
