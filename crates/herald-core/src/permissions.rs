//! Subject permissions with NATS semantics: a subject is allowed when an allow pattern
//! matches it and no deny pattern does. Deny wins; no allow pattern means nothing.

use crate::subject::Pattern;

/// Allow and deny patterns for one direction (publish or subscribe).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    pub allow: Vec<Pattern>,
    pub deny: Vec<Pattern>,
}

impl Permissions {
    /// Everything allowed, nothing denied.
    pub fn all() -> Self {
        Permissions {
            allow: vec![Pattern::all()],
            deny: Vec::new(),
        }
    }

    /// Nothing allowed.
    pub fn none() -> Self {
        Permissions::default()
    }

    pub fn allows(&self, subject: &str) -> bool {
        self.allow.iter().any(|p| p.matches(subject))
            && !self.deny.iter().any(|p| p.matches(subject))
    }

    /// These rights, further limited to subjects within `spaces` (a tenant's subject
    /// spaces): the allow patterns become their intersections with the spaces.
    pub fn within(&self, spaces: &[Pattern]) -> Permissions {
        let mut allow = Vec::new();
        for pattern in &self.allow {
            for space in spaces {
                if let Some(narrowed) = pattern.intersect(space) {
                    if !allow.iter().any(|p: &Pattern| narrowed.is_within(p)) {
                        allow.retain(|p: &Pattern| !p.is_within(&narrowed));
                        allow.push(narrowed);
                    }
                }
            }
        }
        Permissions {
            allow,
            deny: self.deny.clone(),
        }
    }

    /// Whether every subject `pattern` matches is allowed: it lies within one allow
    /// pattern and overlaps no deny pattern. (A pattern spread over several allow
    /// patterns is refused: a conservative answer, never a wrong "yes".)
    pub fn allows_all_of(&self, pattern: &Pattern) -> bool {
        self.allow.iter().any(|a| pattern.is_within(a))
            && !self.deny.iter().any(|d| d.overlaps(pattern))
    }

    /// `pattern` narrowed to what may be allowed: its intersections with the allow
    /// patterns (empty when it can match nothing allowed). Deny patterns still apply to
    /// each subject found.
    pub fn narrow(&self, pattern: &Pattern) -> Vec<Pattern> {
        let mut out: Vec<Pattern> = Vec::new();
        for allow in &self.allow {
            if let Some(narrowed) = pattern.intersect(allow) {
                if !out.iter().any(|p| narrowed.is_within(p)) {
                    out.retain(|p| !p.is_within(&narrowed));
                    out.push(narrowed);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::subject::tests::reference;

    fn p(text: &str) -> Pattern {
        Pattern::parse(text).unwrap()
    }

    fn perms(allow: &[&str], deny: &[&str]) -> Permissions {
        Permissions {
            allow: allow.iter().map(|t| p(t)).collect(),
            deny: deny.iter().map(|t| p(t)).collect(),
        }
    }

    #[test]
    fn deny_wins_and_no_allow_means_nothing() {
        let rights = perms(&["hub.acme.>"], &["hub.acme.secret.>"]);
        assert!(rights.allows("hub.acme.orders.created"));
        assert!(!rights.allows("hub.acme.secret.key"));
        assert!(!rights.allows("hub.other.orders"));
        assert!(!Permissions::none().allows("hub.acme.x"));
        assert!(Permissions::all().allows("anything.at.all"));
    }

    #[test]
    fn intersections_are_exact() {
        let cases = [
            ("hub.*.x", "hub.acme.>", Some("hub.acme.x")),
            (">", "hub.acme.>", Some("hub.acme.>")),
            ("hub.>", "*.acme", Some("hub.acme")),
            ("a.b", "a.c", None),
            ("a.>", "a", None),
            ("*.*", "a.>", Some("a.*")),
            ("a.*.c", "*.b.*", Some("a.b.c")),
        ];
        for (a, b, want) in cases {
            let got = p(a).intersect(&p(b)).map(|q| q.as_str().to_owned());
            assert_eq!(got.as_deref(), want, "{a} ∩ {b}");
            let back = p(b).intersect(&p(a)).map(|q| q.as_str().to_owned());
            assert_eq!(back.as_deref(), want, "{b} ∩ {a}");
        }
    }

    #[test]
    fn within_a_tenant_space_narrows_the_allow_patterns() {
        let rights = perms(&[">"], &["hub.acme.audit.>"]).within(&[p("hub.acme.>")]);
        assert_eq!(rights.allow, vec![p("hub.acme.>")]);
        assert!(rights.allows("hub.acme.orders"));
        assert!(!rights.allows("hub.acme.audit.x"));
        assert!(!rights.allows("hub.beta.orders"));
        assert_eq!(
            perms(&["hub.beta.>"], &[]).within(&[p("hub.acme.>")]).allow,
            vec![]
        );
    }

    fn pattern() -> impl Strategy<Value = Pattern> {
        reference::pattern_text().prop_filter_map("valid", |t| Pattern::parse(&t).ok())
    }

    proptest! {
        /// Deny always wins: no subject a deny pattern matches is allowed, whatever the
        /// allow patterns say; and an allowed subject matches some allow pattern.
        #[test]
        fn deny_always_wins(
            allow in prop::collection::vec(pattern(), 0..4),
            deny in prop::collection::vec(pattern(), 0..3),
            subject in reference::subject_text(),
        ) {
            let rights = Permissions { allow: allow.clone(), deny: deny.clone() };
            let denied = deny.iter().any(|d| d.matches(&subject));
            let allowed = allow.iter().any(|a| a.matches(&subject));
            prop_assert_eq!(rights.allows(&subject), allowed && !denied);
        }

        /// A subject matches the intersection exactly when it matches both patterns.
        #[test]
        fn intersection_matches_what_both_match(
            a in pattern(),
            b in pattern(),
            subject in reference::subject_text(),
        ) {
            let both = a.matches(&subject) && b.matches(&subject);
            match a.intersect(&b) {
                Some(i) => prop_assert_eq!(i.matches(&subject), both, "{} ∩ {} = {}", a, b, i),
                None => prop_assert!(!both, "{} ∩ {} empty but {} matches both", a, b, subject),
            }
        }

        /// Narrowing never lets through a subject the rights do not allow, and keeps every
        /// one they do.
        #[test]
        fn narrowing_keeps_exactly_the_allowed_matches(
            allow in prop::collection::vec(pattern(), 0..3),
            filter in pattern(),
            subject in reference::subject_text(),
        ) {
            let rights = Permissions { allow, deny: Vec::new() };
            let narrowed = rights.narrow(&filter);
            let through = narrowed.iter().any(|n| n.matches(&subject));
            prop_assert_eq!(through, filter.matches(&subject) && rights.allows(&subject));
        }

        /// `allows_all_of` never says yes for a pattern that matches a refused subject.
        #[test]
        fn allows_all_of_is_never_wrong(
            allow in prop::collection::vec(pattern(), 0..3),
            deny in prop::collection::vec(pattern(), 0..2),
            filter in pattern(),
            subject in reference::subject_text(),
        ) {
            let rights = Permissions { allow, deny };
            if rights.allows_all_of(&filter) && filter.matches(&subject) {
                prop_assert!(rights.allows(&subject));
            }
        }
    }
}
