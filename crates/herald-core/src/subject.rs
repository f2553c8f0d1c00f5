//! Subjects and subject patterns, with the NATS grammar.
//!
//! A subject is a `.`-separated list of non-empty tokens (`hub.local-hub.project.created`).
//! A pattern may also use `*` (exactly one token) and `>` (one or more trailing tokens,
//! last position only). As in NATS, `*` and `>` are wildcards only as whole tokens:
//! inside a longer token (`foo*`, `*bar`, `x>y`) they are ordinary characters, so
//! `hub.x.foo*` is a literal subject and, as a pattern, matches only itself. Publishing
//! needs a literal [`Subject`]; filters are [`Pattern`]s. Query filters written in the
//! seed documents' SQL style (`hub.%.project.%`) accept a whole-token `%` as `*`
//! (`foo%` stays literal).
//!
//! Tokens never contain whitespace, control characters or Unicode format characters
//! (general category Cf: bidi overrides, zero-width spaces, the BOM, soft hyphens…),
//! which would let two different subjects look the same.

use std::fmt;
use std::str::FromStr;

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// Longest subject or pattern accepted, in bytes. NATS itself has no hard limit, but
/// subjects are stored and indexed with every event, so Herald keeps them bounded.
pub const MAX_SUBJECT_BYTES: usize = 512;

/// Most tokens a subject or pattern may have.
pub const MAX_SUBJECT_TOKENS: usize = 64;

/// Why a subject or pattern was rejected. The messages are written for API clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error("subject is empty")]
    Empty,
    #[error("subject is {len} bytes long; the maximum is {MAX_SUBJECT_BYTES}")]
    TooLong { len: usize },
    #[error("subject has {count} tokens; the maximum is {MAX_SUBJECT_TOKENS}")]
    TooManyTokens { count: usize },
    #[error(
        "subject has an empty token at position {position} (tokens are separated by single dots)"
    )]
    EmptyToken { position: usize },
    #[error("subject token {token:?} contains whitespace or a control character")]
    InvalidCharacter { token: String },
    /// A Unicode format character (general category Cf), which renders as nothing or
    /// reorders the text around it.
    #[error(
        "subject token {token:?} contains {}, an invisible Unicode format character (category Cf); \
         such characters make different subjects look the same and are not allowed",
        code_point_name(*.character)
    )]
    FormatCharacter { token: String, character: char },
    #[error("`>` may only be the last token of a pattern")]
    FullWildcardNotLast,
    #[error("a subject you publish to cannot have `*`, `>` or `%` as a whole token (they are wildcards in filters); publish to a literal subject such as `hub.local-hub.project.created` (inside a longer token, as in `foo*`, they are ordinary characters)")]
    WildcardInLiteral,
}

/// `U+202E`: how a character is named in messages.
pub fn code_point_name(character: char) -> String {
    format!("U+{:04X}", u32::from(character))
}

/// One token of a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Token {
    Literal(String),
    /// `*`: exactly one token.
    One,
    /// `>`: one or more trailing tokens.
    Rest,
}

/// A literal subject, valid for publishing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subject(String);

impl Subject {
    /// Validates `raw` as a literal subject: no token is exactly `*`, `>` or `%`.
    pub fn new(raw: impl Into<String>) -> Result<Self, SubjectError> {
        Self::checked(raw.into(), Characters::Strict)
    }

    /// A subject read back from a store: checked as [`Subject::new`] does, except that
    /// format characters are let through, because Herald stored them before it refused
    /// them and those events must stay readable.
    pub fn from_stored(raw: impl Into<String>) -> Result<Self, SubjectError> {
        Self::checked(raw.into(), Characters::AllowFormat)
    }

    fn checked(raw: String, characters: Characters) -> Result<Self, SubjectError> {
        for token in split_checked(&raw, characters)? {
            if matches!(token, "*" | ">" | "%") {
                return Err(SubjectError::WildcardInLiteral);
            }
        }
        Ok(Subject(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn tokens(&self) -> std::str::Split<'_, char> {
        self.0.split('.')
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Subject {
    type Err = SubjectError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Subject::new(s)
    }
}

impl AsRef<str> for Subject {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A subject pattern used to filter subjects: literal tokens, `*` and a trailing `>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    text: String,
    tokens: Vec<Token>,
}

impl Pattern {
    /// Parses a NATS-style pattern (`hub.*.project.>`).
    pub fn parse(raw: &str) -> Result<Self, SubjectError> {
        Self::parse_inner(raw, false)
    }

    /// Parses a query filter: like [`Pattern::parse`], and a whole-token `%` (the SQL
    /// style of the seed documents, `hub.%.project.%`) means `*`.
    pub fn parse_filter(raw: &str) -> Result<Self, SubjectError> {
        Self::parse_inner(raw, true)
    }

    fn parse_inner(raw: &str, percent_is_one: bool) -> Result<Self, SubjectError> {
        let parts = split_checked(raw, Characters::Strict)?;
        let n = parts.len();
        let mut tokens = Vec::with_capacity(n);
        for (i, part) in parts.into_iter().enumerate() {
            let token = if percent_is_one && part == "%" {
                Token::One
            } else {
                classify(part)
            };
            if token == Token::Rest && i + 1 != n {
                return Err(SubjectError::FullWildcardNotLast);
            }
            tokens.push(token);
        }
        let text = tokens
            .iter()
            .map(|t| match t {
                Token::Literal(s) => s.as_str(),
                Token::One => "*",
                Token::Rest => ">",
            })
            .collect::<Vec<_>>()
            .join(".");
        Ok(Pattern { text, tokens })
    }

    /// The pattern that matches every subject.
    pub fn all() -> Self {
        Pattern {
            text: ">".to_owned(),
            tokens: vec![Token::Rest],
        }
    }

    /// The canonical text (`%` tokens written as `*`).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    /// True when the pattern has no wildcard, i.e. names exactly one subject.
    pub fn is_literal(&self) -> bool {
        self.tokens.iter().all(|t| matches!(t, Token::Literal(_)))
    }

    /// True when every subject matches (`>`).
    pub fn matches_everything(&self) -> bool {
        matches!(self.tokens.as_slice(), [Token::Rest])
    }

    /// The literal tokens before the first wildcard, joined with dots and followed by a
    /// dot when a wildcard follows. Every matching subject starts with this string, so a
    /// store can turn it into an index range. Empty when the pattern starts with a wildcard.
    pub fn literal_prefix(&self) -> String {
        let mut prefix = String::new();
        for token in &self.tokens {
            match token {
                Token::Literal(s) => {
                    prefix.push_str(s);
                    prefix.push('.');
                }
                Token::One | Token::Rest => return prefix,
            }
        }
        // Fully literal: the subject itself, without the trailing dot.
        prefix.pop();
        prefix
    }

    /// Whether `subject` matches this pattern.
    pub fn matches(&self, subject: &str) -> bool {
        let mut parts = subject.split('.');
        for token in &self.tokens {
            match token {
                Token::Rest => return parts.next().is_some(),
                Token::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Token::Literal(lit) => match parts.next() {
                    Some(part) if part == lit => {}
                    _ => return false,
                },
            }
        }
        parts.next().is_none()
    }

    /// Whether every subject this pattern matches is matched by `outer` too (for
    /// example `hub.global.>` is within `hub.>`, `hub.*` is not within `hub.a`).
    pub fn is_within(&self, outer: &Pattern) -> bool {
        fn within(inner: &[Token], outer: &[Token]) -> bool {
            match (inner.first(), outer.first()) {
                (None, None) => true,
                (Some(_), Some(Token::Rest)) => true,
                (None, Some(_)) | (Some(_), None) | (Some(Token::Rest), Some(_)) => false,
                (Some(token), Some(Token::One)) => {
                    !matches!(token, Token::Rest) && within(&inner[1..], &outer[1..])
                }
                (Some(Token::Literal(a)), Some(Token::Literal(b))) => {
                    a == b && within(&inner[1..], &outer[1..])
                }
                (Some(Token::One), Some(Token::Literal(_))) => false,
            }
        }
        within(&self.tokens, &outer.tokens)
    }
}

impl Pattern {
    /// The pattern matching exactly the subjects both patterns match, or `None` when no
    /// subject matches both (`hub.*.x` ∩ `hub.acme.>` = `hub.acme.x`; `>` ∩ `p` = `p`).
    /// Used to narrow a caller's filter to what it may see.
    pub fn intersect(&self, other: &Pattern) -> Option<Pattern> {
        fn go(a: &[Token], b: &[Token], out: &mut Vec<Token>) -> bool {
            match (a.first(), b.first()) {
                (None, None) => true,
                (None, Some(_)) | (Some(_), None) => false,
                // `>` takes one or more tokens: the rest of the other side, if it has any.
                (Some(Token::Rest), _) => {
                    out.extend_from_slice(b);
                    true
                }
                (_, Some(Token::Rest)) => {
                    out.extend_from_slice(a);
                    true
                }
                (Some(x), Some(y)) => {
                    let token = match (x, y) {
                        (Token::One, t) | (t, Token::One) => t.clone(),
                        (Token::Literal(p), Token::Literal(q)) if p == q => x.clone(),
                        _ => return false,
                    };
                    out.push(token);
                    go(&a[1..], &b[1..], out)
                }
            }
        }
        let mut tokens = Vec::with_capacity(self.tokens.len().max(other.tokens.len()));
        if !go(&self.tokens, &other.tokens, &mut tokens) {
            return None;
        }
        let text = tokens
            .iter()
            .map(|t| match t {
                Token::Literal(s) => s.as_str(),
                Token::One => "*",
                Token::Rest => ">",
            })
            .collect::<Vec<_>>()
            .join(".");
        Some(Pattern { text, tokens })
    }

    /// Whether some subject matches both patterns.
    pub fn overlaps(&self, other: &Pattern) -> bool {
        self.intersect(other).is_some()
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Pattern {
    type Err = SubjectError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Pattern::parse(s)
    }
}

/// Seed 002's subject prefixing: `project.created` on hub `local-hub` becomes
/// `hub.local-hub.project.created`; a subject that already starts with `hub.` is kept.
pub fn qualify_subject(hub_id: &str, subject: &str) -> String {
    if subject == "hub" || subject.starts_with("hub.") {
        subject.to_owned()
    } else {
        format!("hub.{hub_id}.{subject}")
    }
}

/// Which characters a token may hold beyond the ones always refused.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Characters {
    /// No whitespace, control or format characters.
    Strict,
    /// Format characters too (subjects stored before they were refused).
    AllowFormat,
}

/// Splits on dots after the checks every subject and pattern shares.
fn split_checked(raw: &str, characters: Characters) -> Result<Vec<&str>, SubjectError> {
    if raw.is_empty() {
        return Err(SubjectError::Empty);
    }
    if raw.len() > MAX_SUBJECT_BYTES {
        return Err(SubjectError::TooLong { len: raw.len() });
    }
    let parts: Vec<&str> = raw.split('.').collect();
    if parts.len() > MAX_SUBJECT_TOKENS {
        return Err(SubjectError::TooManyTokens { count: parts.len() });
    }
    for (position, part) in parts.iter().enumerate() {
        if part.is_empty() {
            return Err(SubjectError::EmptyToken { position });
        }
        if part.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(SubjectError::InvalidCharacter {
                token: part.to_string(),
            });
        }
        if characters == Characters::Strict {
            if let Some(character) = part.chars().find(|c| is_format_character(*c)) {
                return Err(SubjectError::FormatCharacter {
                    token: part.to_string(),
                    character,
                });
            }
        }
    }
    Ok(parts)
}

/// Unicode general category Cf ("Format"): U+200B–U+200F, U+202A–U+202E, U+2060–U+2064,
/// U+2066–U+206F, U+FEFF, U+00AD, tag characters and others.
pub fn is_format_character(c: char) -> bool {
    // Every Cf character is outside ASCII: keep the common case cheap.
    !c.is_ascii() && c.general_category() == GeneralCategory::Format
}

/// A token as NATS reads it: `*` and `>` are wildcards only as whole tokens.
fn classify(part: &str) -> Token {
    match part {
        "*" => Token::One,
        ">" => Token::Rest,
        _ => Token::Literal(part.to_string()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn literal_subjects() {
        assert!(Subject::new("hub.local-hub.project.created").is_ok());
        assert!(Subject::new("a").is_ok());
        assert_eq!(Subject::new(""), Err(SubjectError::Empty));
        assert_eq!(
            Subject::new("hub..x"),
            Err(SubjectError::EmptyToken { position: 1 })
        );
        assert_eq!(
            Subject::new(".hub"),
            Err(SubjectError::EmptyToken { position: 0 })
        );
        assert_eq!(
            Subject::new("hub."),
            Err(SubjectError::EmptyToken { position: 1 })
        );
        assert!(matches!(
            Subject::new("hub.a b"),
            Err(SubjectError::InvalidCharacter { .. })
        ));
        assert!(matches!(
            Subject::new("hub.a\tb"),
            Err(SubjectError::InvalidCharacter { .. })
        ));
        assert!(matches!(
            Subject::new("hub.\u{0}"),
            Err(SubjectError::InvalidCharacter { .. })
        ));
        assert_eq!(
            Subject::new("hub.*.x"),
            Err(SubjectError::WildcardInLiteral)
        );
        assert_eq!(Subject::new("hub.>"), Err(SubjectError::WildcardInLiteral));
        assert_eq!(Subject::new("hub.%"), Err(SubjectError::WildcardInLiteral));
        assert!(
            Subject::new("hub.a*").is_ok(),
            "`*` inside a token is literal"
        );
        assert!(matches!(
            Subject::new("x".repeat(MAX_SUBJECT_BYTES + 1)),
            Err(SubjectError::TooLong { .. })
        ));
        assert!(Subject::new("x".repeat(MAX_SUBJECT_BYTES)).is_ok());
        assert!(matches!(
            Subject::new(vec!["a"; MAX_SUBJECT_TOKENS + 1].join(".")),
            Err(SubjectError::TooManyTokens { .. })
        ));
        assert!(Subject::new("hub.ünïcode.✓").is_ok());
    }

    /// NATS treats `*` and `>` as wildcards only when they are a whole token. From
    /// nats-server's `server/sublist_test.go` (TestSublistValidLiteralSubjects):
    ///
    /// ```go
    /// // The followings have widlcards characters but are not
    /// // considered as such because they are not individual tokens.
    /// checkBool(IsValidLiteralSubject("foo*"), true, t)
    /// checkBool(IsValidLiteralSubject("foo.*bar"), true, t)
    /// checkBool(IsValidLiteralSubject("foo>bar"), true, t)
    /// ```
    ///
    /// and `server/sublist.go`, where a wildcard character makes a subject non-literal
    /// only with a separator (or the end) on both sides:
    ///
    /// ```go
    /// if c == pwc || c == fwc {
    ///     if (i == 0 || subject[i-1] == btsep) &&
    ///         (i+1 == len(subject) || subject[i+1] == btsep) {
    ///         return false
    /// ```
    ///
    /// TestSublistMatchLiterals: `checkBool(matchLiteral("foo*", "foo*"), true, t)`.
    #[test]
    fn wildcard_characters_inside_tokens_are_literal_as_in_nats() {
        // Every literal subject of TestSublistValidLiteralSubjects is one here.
        for subject in [
            "foo", "foo*", "foo**", "foo.**", "foo*bar", "foo.*bar", "foo*.bar", "*bar", "foo>",
            "foo>>", "foo.>>", "foo>bar", "foo.>bar", "foo>.bar", ">bar", "foo.*-", "x>y", "foo%",
        ] {
            assert!(Subject::new(subject).is_ok(), "{subject}");
            let pattern = Pattern::parse_filter(subject).unwrap();
            assert!(pattern.is_literal(), "{subject}");
            assert!(pattern.matches(subject), "{subject}");
        }
        // …and every non-literal one is refused for publishing.
        for subject in ["foo.bar.*", "foo.bar.>", "*", ">", "hub.%"] {
            assert_eq!(
                Subject::new(subject),
                Err(SubjectError::WildcardInLiteral),
                "{subject}"
            );
        }
        let m = |p: &str, s: &str| Pattern::parse_filter(p).unwrap().matches(s);
        assert!(m("hub.x.foo*", "hub.x.foo*"));
        assert!(!m("hub.x.foo*", "hub.x.foo"));
        assert!(!m("hub.x.foo*", "hub.x.foobar"));
        assert!(m("hub.*.foo*", "hub.y.foo*"));
        assert!(!m("hub.*.foo*", "hub.y.fooz"));
        assert_eq!(
            Pattern::parse_filter("hub.*.foo*").unwrap().tokens(),
            &[
                Token::Literal("hub".into()),
                Token::One,
                Token::Literal("foo*".into())
            ]
        );
        assert!(m("x>y.>", "x>y.z"));
        assert!(!m("x>y.>", "x>y"));
        assert!(m("a.%.b%", "a.q.b%"));
        assert!(!m("a.%.b%", "a.q.bz"));
        assert_eq!(Pattern::parse_filter("a.%.b%").unwrap().as_str(), "a.*.b%");
        assert_eq!(
            Pattern::parse("x.foo*.>").unwrap().literal_prefix(),
            "x.foo*."
        );
        assert_eq!(Pattern::parse("*x.>").unwrap().literal_prefix(), "*x.");
    }

    #[test]
    fn format_characters_are_refused_by_code_point() {
        for c in [
            '\u{00AD}',
            '\u{061C}',
            '\u{180E}',
            '\u{200B}',
            '\u{200C}',
            '\u{200D}',
            '\u{200E}',
            '\u{200F}',
            '\u{202A}',
            '\u{202B}',
            '\u{202C}',
            '\u{202D}',
            '\u{202E}',
            '\u{2060}',
            '\u{2061}',
            '\u{2064}',
            '\u{2066}',
            '\u{2067}',
            '\u{2068}',
            '\u{2069}',
            '\u{FEFF}',
            '\u{FFF9}',
            '\u{110BD}',
            '\u{E0001}',
            '\u{E0041}',
        ] {
            let subject = format!("hub.admin{c}.x");
            let error = Subject::new(subject.as_str()).unwrap_err();
            assert_eq!(
                error,
                SubjectError::FormatCharacter {
                    token: format!("admin{c}"),
                    character: c
                }
            );
            let message = error.to_string();
            assert!(
                message.contains(&format!("U+{:04X}", c as u32)),
                "{message}"
            );
            assert!(
                !message.contains(c),
                "the message shows it escaped: {message}"
            );
            assert!(matches!(
                Pattern::parse_filter(&subject),
                Err(SubjectError::FormatCharacter { .. })
            ));
            assert!(matches!(
                Pattern::parse(&format!("hub.{c}.>")),
                Err(SubjectError::FormatCharacter { .. })
            ));
            // Stored before the rule: still readable.
            assert!(Subject::from_stored(subject.as_str()).is_ok());
        }
        assert_eq!(
            Subject::new("hub.\u{202E}").unwrap_err().to_string(),
            "subject token \"\\u{202e}\" contains U+202E, an invisible Unicode format character \
             (category Cf); such characters make different subjects look the same and are not allowed"
        );
        // Visible non-ASCII letters, marks and symbols are fine.
        for subject in ["hub.ünïcode.✓", "hub.日本語", "hub.e\u{301}", "hub.🚀"] {
            assert!(Subject::new(subject).is_ok(), "{subject}");
        }
        assert!(matches!(
            Subject::from_stored("hub.*"),
            Err(SubjectError::WildcardInLiteral)
        ));
    }

    #[test]
    fn patterns() {
        assert!(Pattern::parse("hub.>").is_ok());
        assert!(Pattern::parse(">").is_ok());
        assert!(Pattern::parse("*").is_ok());
        assert_eq!(
            Pattern::parse("hub.>.x"),
            Err(SubjectError::FullWildcardNotLast)
        );
        assert!(Pattern::parse("hub.%").unwrap().is_literal());
        assert_eq!(
            Pattern::parse_filter("hub.%.project.%").unwrap().as_str(),
            "hub.*.project.*"
        );
    }

    #[test]
    fn matching() {
        let m = |p: &str, s: &str| Pattern::parse_filter(p).unwrap().matches(s);
        assert!(m("hub.>", "hub.a"));
        assert!(m("hub.>", "hub.a.b.c"));
        assert!(!m("hub.>", "hub"));
        assert!(m("hub.*.project.*", "hub.local.project.created"));
        assert!(!m("hub.*.project.*", "hub.local.project.created.late"));
        assert!(!m("hub.*.project.*", "hub.local.project"));
        assert!(m("hub.%.project.%", "hub.x.project.y"));
        assert!(m("a.b", "a.b"));
        assert!(!m("a.b", "a.bc"));
        assert!(!m("a.b", "a.b.c"));
        assert!(!m("a.b.c", "a.b"));
        assert!(m(">", "x"));
        assert!(m("*", "x"));
        assert!(!m("*", "x.y"));
    }

    #[test]
    fn literal_prefix() {
        let p = |s: &str| Pattern::parse(s).unwrap().literal_prefix();
        assert_eq!(p("hub.*.project.*"), "hub.");
        assert_eq!(p("hub.local.>"), "hub.local.");
        assert_eq!(p("hub.local.x"), "hub.local.x");
        assert_eq!(p(">"), "");
        assert_eq!(p("*.x"), "");
    }

    #[test]
    fn patterns_within_patterns() {
        let p = |s: &str| Pattern::parse(s).unwrap();
        for (inner, outer, expected) in [
            ("hub.global.>", "hub.>", true),
            ("hub.a.b", "hub.>", true),
            ("hub.*.b", "hub.*.*", true),
            ("hub.>", "hub.>", true),
            ("hub", "hub.>", false),
            ("hub.>", "hub.*", false),
            ("hub.*", "hub.a", false),
            ("other.>", "hub.>", false),
            ("hub.a", "hub.a.>", false),
            ("hub.a.b.c", "hub.*.>", true),
        ] {
            assert_eq!(
                p(inner).is_within(&p(outer)),
                expected,
                "{inner} within {outer}"
            );
        }
    }

    #[test]
    fn qualifies_subjects_under_the_hub() {
        assert_eq!(
            qualify_subject("local-hub", "project.created"),
            "hub.local-hub.project.created"
        );
        assert_eq!(qualify_subject("local-hub", "hub.other.x"), "hub.other.x");
        assert_eq!(qualify_subject("a", "hubris.x"), "hub.a.hubris.x");
    }

    /// Every subject of 1..=6 tokens over `a b c d` (`d` stands for any token no pattern
    /// names).
    fn universe() -> Vec<String> {
        let mut all: Vec<String> = Vec::new();
        let mut layer: Vec<String> = vec![String::new()];
        for _ in 0..6 {
            layer = layer
                .iter()
                .flat_map(|prefix| {
                    ["a", "b", "c", "d"].iter().map(move |t| {
                        if prefix.is_empty() {
                            t.to_string()
                        } else {
                            format!("{prefix}.{t}")
                        }
                    })
                })
                .collect();
            all.extend(layer.iter().cloned());
        }
        all
    }

    fn small_pattern() -> impl proptest::strategy::Strategy<Value = Pattern> {
        use proptest::prelude::*;
        let token = prop_oneof![Just("a"), Just("b"), Just("c"), Just("*"), Just(">")];
        prop::collection::vec(token, 1..5).prop_filter_map("`>` last only", |tokens| {
            Pattern::parse(&tokens.join(".")).ok()
        })
    }

    proptest::proptest! {
        /// `is_within` is exactly "every subject the inner pattern matches, the outer
        /// matches too", checked against every subject of a small universe.
        #[test]
        fn is_within_agrees_with_matching(inner in small_pattern(), outer in small_pattern()) {
            let subjects = universe();
            let expected = subjects
                .iter()
                .all(|s| !inner.matches(s) || outer.matches(s));
            proptest::prop_assert_eq!(inner.is_within(&outer), expected, "{} within {}", inner, outer);
        }

        /// `Pattern::matches` agrees with the reference matcher, for filters (`%` is
        /// `*`) and NATS patterns (`%` is literal), on tokens with `*`, `>` and `%` inside.
        #[test]
        fn matching_agrees_with_the_reference(
            pattern in reference::pattern_text(),
            subjects in proptest::collection::vec(reference::subject_text(), 1..16),
        ) {
            for percent_is_one in [true, false] {
                let parsed = if percent_is_one {
                    Pattern::parse_filter(&pattern)
                } else {
                    Pattern::parse(&pattern)
                };
                let Ok(parsed) = parsed else {
                    // Only `>` before the last token is refused.
                    let rest_inside = pattern.split('.').rev().skip(1).any(|t| t == ">");
                    proptest::prop_assert!(rest_inside, "{} refused", pattern);
                    continue;
                };
                let prefix = parsed.literal_prefix();
                for subject in &subjects {
                    proptest::prop_assert!(Subject::new(subject.as_str()).is_ok(), "{}", subject);
                    let expected = reference::matches(&pattern, subject, percent_is_one);
                    proptest::prop_assert_eq!(
                        parsed.matches(subject), expected,
                        "{} ~ {} (% is *: {})", pattern, subject, percent_is_one
                    );
                    if expected {
                        proptest::prop_assert!(subject.starts_with(&prefix), "{} prefix {}", subject, prefix);
                    }
                }
                // A literal pattern matches its own text, and only that.
                if parsed.is_literal() {
                    proptest::prop_assert!(parsed.matches(parsed.as_str()));
                }
            }
        }
    }

    /// A deliberately plain NATS matcher on strings, independent of [`Pattern`].
    pub(crate) mod reference {
        use proptest::prelude::*;

        /// Whether `subject` matches `pattern`: `*` (and, when `percent_is_one`, `%`) as a
        /// whole token is any one token, a last `>` is one or more tokens, and every other
        /// token — `foo*`, `>bar`, `%x` included — must be equal.
        pub fn matches(pattern: &str, subject: &str, percent_is_one: bool) -> bool {
            let pattern: Vec<&str> = pattern.split('.').collect();
            let subject: Vec<&str> = subject.split('.').collect();
            let mut i = 0;
            while i < pattern.len() {
                let token = pattern[i];
                if token == ">" && i + 1 == pattern.len() {
                    return subject.len() > i;
                }
                let Some(part) = subject.get(i) else {
                    return false;
                };
                let one = token == "*" || (percent_is_one && token == "%");
                if !one && token != *part {
                    return false;
                }
                i += 1;
            }
            i == subject.len()
        }

        /// Literal tokens, some with wildcard characters inside.
        pub fn literal_token() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("a"),
                Just("b"),
                Just("a*"),
                Just("*a"),
                Just("a>"),
                Just(">a"),
                Just("**"),
                Just(">>"),
                Just("*>"),
                Just("a%"),
                Just("%%"),
            ]
            .prop_map(str::to_owned)
        }

        pub fn subject_text() -> impl Strategy<Value = String> {
            prop::collection::vec(literal_token(), 1..6).prop_map(|t| t.join("."))
        }

        /// Pattern text: literal tokens and the wildcards `*`, `>` and `%` (some with `>`
        /// in a place it is refused).
        pub fn pattern_text() -> impl Strategy<Value = String> {
            let token = prop_oneof![
                3 => literal_token(),
                1 => Just("*".to_owned()),
                1 => Just("%".to_owned()),
                1 => Just(">".to_owned()),
            ];
            prop::collection::vec(token, 1..6).prop_map(|t| t.join("."))
        }
    }
}
