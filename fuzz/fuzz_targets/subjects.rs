//! The subject grammar and matcher: `Subject::new`, `Pattern::parse` / `parse_filter`,
//! `Pattern::matches`, `Pattern::is_within` and `SubjectTree`.
//!
//! Input: lines of text. Each line is tried as a subject, a pattern and a filter, and
//! registered in a `SubjectTree` when it parses as a filter; a line `-<text>` instead
//! removes one registration of `<text>`. Every valid subject among the lines (and the
//! witnesses built from the patterns) is then matched against every pattern.
#![no_main]

use herald_core::{Pattern, Subject, SubjectTree, Token, MAX_SUBJECT_BYTES, MAX_SUBJECT_TOKENS};
use herald_fuzz::check_subject;
use libfuzzer_sys::fuzz_target;

/// Bounds the quadratic checks, so each run stays fast.
const MAX_LINES: usize = 32;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut patterns: Vec<Pattern> = Vec::new();
    let mut subjects: Vec<String> = Vec::new();
    let mut tree: SubjectTree<usize> = SubjectTree::new();
    // The model of the tree: every (pattern, value) registered and not yet removed.
    let mut registered: Vec<(Pattern, usize)> = Vec::new();

    for (index, line) in text.split('\n').take(MAX_LINES).enumerate() {
        if let Some(removed) = line.strip_prefix('-') {
            let Ok(pattern) = Pattern::parse_filter(removed) else {
                continue;
            };
            // Remove the registration of the first line with this text, if any.
            let value = text
                .split('\n')
                .position(|l| l == removed)
                .unwrap_or(usize::MAX);
            let expected = registered
                .iter()
                .position(|(p, v)| *p == pattern && *v == value);
            assert_eq!(
                tree.remove(&pattern, &value),
                expected.is_some(),
                "removing {removed:?} (value {value})"
            );
            if let Some(i) = expected {
                registered.swap_remove(i);
            }
            continue;
        }
        check_parsers(line);
        if Subject::new(line).is_ok() {
            subjects.push(line.to_owned());
        }
        if let Ok(pattern) = Pattern::parse_filter(line) {
            tree.insert(&pattern, index);
            registered.push((pattern.clone(), index));
            patterns.push(pattern);
        }
    }
    assert_eq!(tree.len(), registered.len());

    for pattern in &patterns {
        for pattern_outer in &patterns {
            check_within(pattern, pattern_outer, &mut subjects);
        }
    }
    for subject in &subjects {
        for pattern in &patterns {
            check_match(pattern, subject);
        }
        let mut found: Vec<usize> = tree.matches(subject).into_iter().copied().collect();
        let mut expected: Vec<usize> = registered
            .iter()
            .filter(|(p, _)| p.matches(subject))
            .map(|(_, v)| *v)
            .collect();
        found.sort_unstable();
        expected.sort_unstable();
        assert_eq!(found, expected, "the tree's matches for {subject:?}");
    }
});

/// What must hold between the three parsers for one text.
fn check_parsers(text: &str) {
    let subject = Subject::new(text);
    let pattern = Pattern::parse(text);
    let filter = Pattern::parse_filter(text);
    // `%` changes a token's meaning, never whether the text parses.
    assert_eq!(pattern.is_ok(), filter.is_ok(), "{text:?}");
    if let Ok(subject) = &subject {
        assert_eq!(subject.as_str(), text);
        assert!(text.len() <= MAX_SUBJECT_BYTES);
        assert!(subject.tokens().count() <= MAX_SUBJECT_TOKENS);
        check_subject(subject);
        let filter = filter.as_ref().expect("a subject is a filter");
        assert!(filter.is_literal());
        assert_eq!(filter.literal_prefix(), text);
    }
    if let Ok(pattern) = &pattern {
        assert_eq!(pattern.as_str(), text, "a pattern's text is as written");
        assert_eq!(Pattern::parse(pattern.as_str()).as_ref(), Ok(pattern));
        assert!(pattern.is_within(pattern));
        let has_percent = text.split('.').any(|t| t == "%");
        assert_eq!(
            subject.is_ok(),
            pattern.is_literal() && !has_percent,
            "{text:?}: literal patterns without `%` are exactly the subjects"
        );
    }
    if let Ok(filter) = &filter {
        // The canonical text parses back, with either parser, to the same filter.
        assert_eq!(Pattern::parse(filter.as_str()).as_ref(), Ok(filter));
        assert_eq!(Pattern::parse_filter(filter.as_str()).as_ref(), Ok(filter));
        assert!(filter.as_str().split('.').all(|t| t != "%"));
    }
}

/// What must hold for one pattern and one valid subject.
fn check_match(pattern: &Pattern, subject: &str) {
    let matches = pattern.matches(subject);
    let literal = Pattern::parse(subject).expect("a subject is a pattern");
    assert_eq!(
        matches,
        literal.is_within(pattern),
        "{pattern} matches {subject:?} exactly when the subject is within it"
    );
    if pattern.is_literal() {
        assert_eq!(
            matches,
            subject == pattern.as_str(),
            "{pattern} vs {subject:?}"
        );
    }
    if pattern.matches_everything() {
        assert!(matches);
    }
    if matches {
        assert!(
            subject.starts_with(&pattern.literal_prefix()),
            "{subject:?} matches {pattern} but does not start with its literal prefix"
        );
        let (tokens, wanted) = (subject.split('.').count(), pattern.tokens().len());
        match pattern.tokens().last() {
            Some(Token::Rest) => assert!(tokens >= wanted),
            _ => assert_eq!(tokens, wanted),
        }
    }
}

/// `inner.is_within(outer)` holds exactly when `outer` matches every subject `inner`
/// does. Checked on witnesses: `inner` with each wildcard replaced by a token `outer`
/// does not name, and its `>` by one such token or by more tokens than `outer` has.
/// One of them escapes `outer` whenever any subject does.
fn check_within(inner: &Pattern, outer: &Pattern, subjects: &mut Vec<String>) {
    let longest = outer
        .tokens()
        .iter()
        .map(|t| match t {
            Token::Literal(s) => s.len(),
            _ => 0,
        })
        .max()
        .unwrap_or(0);
    let fresh = "~".repeat(longest + 1);
    let mut witnesses = Vec::new();
    for rest_len in [1, outer.tokens().len() + 1] {
        let tokens: Vec<&str> = inner
            .tokens()
            .iter()
            .flat_map(|t| match t {
                Token::Literal(s) => vec![s.as_str()],
                Token::One => vec![fresh.as_str()],
                Token::Rest => vec![fresh.as_str(); rest_len],
            })
            .collect();
        witnesses.push(tokens.join("."));
    }
    for witness in &witnesses {
        assert!(
            inner.matches(witness),
            "{inner} matches its witness {witness:?}"
        );
    }
    let escapes = witnesses.iter().any(|w| !outer.matches(w));
    assert_eq!(
        inner.is_within(outer),
        !escapes,
        "{inner} within {outer} (witnesses {witnesses:?})"
    );
    // Keep a few valid witnesses as subjects for the tree.
    if subjects.len() < 2 * MAX_LINES {
        subjects.extend(
            witnesses
                .into_iter()
                .filter(|w| Subject::new(w.as_str()).is_ok()),
        );
    }
}
