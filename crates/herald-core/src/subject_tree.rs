//! A subject tree: many patterns, matched against one subject at a time.
//!
//! This is the structure NATS calls a sublist. Patterns are stored token by token, so
//! finding every pattern that matches a subject walks at most a few branches per token:
//! the cost grows with the subject's depth, not with the number of subscriptions.

use std::collections::HashMap;

use crate::subject::{Pattern, Token};

/// Values (e.g. subscriber ids) registered under subject patterns.
#[derive(Debug)]
pub struct SubjectTree<V> {
    root: Node<V>,
    len: usize,
}

#[derive(Debug)]
struct Node<V> {
    literal: HashMap<Box<str>, Node<V>>,
    /// Child for a `*` token.
    one: Option<Box<Node<V>>>,
    /// Values whose pattern has `>` at this depth.
    rest: Vec<V>,
    /// Values whose pattern ends exactly at this node.
    here: Vec<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node {
            literal: HashMap::new(),
            one: None,
            rest: Vec::new(),
            here: Vec::new(),
        }
    }
}

impl<V> Node<V> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty()
            && self.one.is_none()
            && self.rest.is_empty()
            && self.here.is_empty()
    }
}

impl<V> Default for SubjectTree<V> {
    fn default() -> Self {
        SubjectTree {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<V: PartialEq> SubjectTree<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of registered (pattern, value) pairs.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn insert(&mut self, pattern: &Pattern, value: V) {
        let mut node = &mut self.root;
        for token in pattern.tokens() {
            match token {
                Token::Literal(lit) => node = node.literal.entry(lit.as_str().into()).or_default(),
                Token::One => node = node.one.get_or_insert_with(Box::default),
                Token::Rest => {
                    node.rest.push(value);
                    self.len += 1;
                    return;
                }
            }
        }
        node.here.push(value);
        self.len += 1;
    }

    /// Removes one registration of `value` under `pattern`; returns whether it was there.
    /// Branches left empty are pruned so the tree does not grow with churn.
    pub fn remove(&mut self, pattern: &Pattern, value: &V) -> bool {
        let removed = remove_at(&mut self.root, pattern.tokens(), value);
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Calls `f` once for every registration whose pattern matches `subject`.
    pub fn for_each_match<'a>(&'a self, subject: &str, mut f: impl FnMut(&'a V)) {
        let tokens: Vec<&str> = subject.split('.').collect();
        visit(&self.root, &tokens, &mut f);
    }

    /// Collects the values whose patterns match `subject`.
    pub fn matches(&self, subject: &str) -> Vec<&V> {
        let mut out = Vec::new();
        self.for_each_match(subject, |v| out.push(v));
        out
    }
}

fn visit<'a, V>(node: &'a Node<V>, tokens: &[&str], f: &mut impl FnMut(&'a V)) {
    let Some((first, rest)) = tokens.split_first() else {
        node.here.iter().for_each(&mut *f);
        return;
    };
    // `>` needs at least one more token, which `first` is.
    node.rest.iter().for_each(&mut *f);
    if let Some(child) = node.literal.get(*first) {
        visit(child, rest, f);
    }
    if let Some(child) = &node.one {
        visit(child, rest, f);
    }
}

fn remove_at<V: PartialEq>(node: &mut Node<V>, tokens: &[Token], value: &V) -> bool {
    fn take<V: PartialEq>(list: &mut Vec<V>, value: &V) -> bool {
        match list.iter().position(|v| v == value) {
            Some(i) => {
                list.swap_remove(i);
                true
            }
            None => false,
        }
    }
    let Some((first, rest)) = tokens.split_first() else {
        return take(&mut node.here, value);
    };
    match first {
        Token::Rest => take(&mut node.rest, value),
        Token::Literal(lit) => {
            let Some(child) = node.literal.get_mut(lit.as_str()) else {
                return false;
            };
            let removed = remove_at(child, rest, value);
            if child.is_empty() {
                node.literal.remove(lit.as_str());
            }
            removed
        }
        Token::One => {
            let Some(child) = node.one.as_deref_mut() else {
                return false;
            };
            let removed = remove_at(child, rest, value);
            if child.is_empty() {
                node.one = None;
            }
            removed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sorted(tree: &SubjectTree<u32>, subject: &str) -> Vec<u32> {
        let mut v: Vec<u32> = tree.matches(subject).into_iter().copied().collect();
        v.sort();
        v
    }

    #[test]
    fn basic_matching_and_removal() {
        let mut tree = SubjectTree::new();
        let p = |s: &str| Pattern::parse(s).unwrap();
        tree.insert(&p("hub.>"), 1);
        tree.insert(&p("hub.*.project.*"), 2);
        tree.insert(&p("hub.local.project.created"), 3);
        tree.insert(&p(">"), 4);
        tree.insert(&p("hub.*"), 5);
        assert_eq!(sorted(&tree, "hub.local.project.created"), vec![1, 2, 3, 4]);
        assert_eq!(sorted(&tree, "hub.x"), vec![1, 4, 5]);
        assert_eq!(sorted(&tree, "hub"), vec![4]);
        assert!(tree.remove(&p("hub.*.project.*"), &2));
        assert!(!tree.remove(&p("hub.*.project.*"), &2));
        assert_eq!(sorted(&tree, "hub.local.project.created"), vec![1, 3, 4]);
        for (pat, v) in [
            ("hub.>", 1),
            ("hub.local.project.created", 3),
            (">", 4),
            ("hub.*", 5),
        ] {
            assert!(tree.remove(&p(pat), &v));
        }
        assert!(tree.is_empty());
        assert!(tree.root.is_empty(), "empty branches are pruned");
    }

    use crate::subject::tests::reference;

    #[test]
    fn wildcard_characters_inside_tokens_are_literal() {
        let mut tree = SubjectTree::new();
        let p = |s: &str| Pattern::parse_filter(s).unwrap();
        tree.insert(&p("hub.x.foo*"), 1);
        tree.insert(&p("hub.*.foo*"), 2);
        tree.insert(&p("hub.x.*"), 3);
        tree.insert(&p("hub.x.>a"), 4);
        tree.insert(&p("hub.%.foo%"), 5);
        assert_eq!(sorted(&tree, "hub.x.foo*"), vec![1, 2, 3]);
        assert_eq!(sorted(&tree, "hub.y.foo*"), vec![2]);
        assert_eq!(sorted(&tree, "hub.x.foo"), vec![3]);
        assert_eq!(sorted(&tree, "hub.x.>a"), vec![3, 4]);
        assert_eq!(sorted(&tree, "hub.x.foo%"), vec![3, 5]);
        assert_eq!(sorted(&tree, "hub.x.fooz"), vec![3]);
    }

    proptest! {
        /// The tree finds exactly the registrations the reference matcher accepts, with
        /// literal tokens holding `*`, `>` and `%`, whole-token `%` filters, and removals.
        #[test]
        fn tree_agrees_with_the_reference_matcher(
            patterns in prop::collection::vec(reference::pattern_text(), 0..24),
            subjects in prop::collection::vec(reference::subject_text(), 1..24),
            removals in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let mut tree = SubjectTree::new();
            let mut live: Vec<(String, usize)> = Vec::new();
            for (i, text) in patterns.iter().enumerate() {
                let Ok(pattern) = Pattern::parse_filter(text) else { continue };
                tree.insert(&pattern, i);
                live.push((text.clone(), i));
            }
            for idx in removals {
                if live.is_empty() { break; }
                let (text, v) = live.remove(idx.index(live.len()));
                prop_assert!(tree.remove(&Pattern::parse_filter(&text).unwrap(), &v));
            }
            prop_assert_eq!(tree.len(), live.len());
            for subject in &subjects {
                let mut expected: Vec<usize> = live
                    .iter()
                    .filter(|(text, _)| reference::matches(text, subject, true))
                    .map(|(_, v)| *v)
                    .collect();
                expected.sort();
                let mut got: Vec<usize> = tree.matches(subject).into_iter().copied().collect();
                got.sort();
                prop_assert_eq!(got, expected, "subject {}", subject);
            }
        }
    }

    fn token() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("c".to_string())
        ]
    }

    fn pattern_token() -> impl Strategy<Value = String> {
        prop_oneof![token(), Just("*".to_string()), Just(">".to_string())]
    }

    fn pattern() -> impl Strategy<Value = Pattern> {
        prop::collection::vec(pattern_token(), 1..5).prop_filter_map("`>` last only", |tokens| {
            Pattern::parse(&tokens.join(".")).ok()
        })
    }

    proptest! {
        /// The tree agrees with matching each pattern on its own.
        #[test]
        fn tree_agrees_with_naive_matching(
            patterns in prop::collection::vec(pattern(), 0..20),
            subjects in prop::collection::vec(prop::collection::vec(token(), 1..5), 1..20),
            removals in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let mut tree = SubjectTree::new();
            let mut live: Vec<(Pattern, usize)> = Vec::new();
            for (i, p) in patterns.iter().enumerate() {
                tree.insert(p, i);
                live.push((p.clone(), i));
            }
            for idx in removals {
                if live.is_empty() { break; }
                let (p, v) = live.remove(idx.index(live.len()));
                prop_assert!(tree.remove(&p, &v));
            }
            prop_assert_eq!(tree.len(), live.len());
            for subject in subjects {
                let subject = subject.join(".");
                let mut expected: Vec<usize> =
                    live.iter().filter(|(p, _)| p.matches(&subject)).map(|(_, v)| *v).collect();
                expected.sort();
                let mut got: Vec<usize> = tree.matches(&subject).into_iter().copied().collect();
                got.sort();
                prop_assert_eq!(got, expected);
            }
        }
    }
}
