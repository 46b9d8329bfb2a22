//! Domain lists with exact names and `*.suffix` patterns, as used for secure domains and
//! static routes.

/// A set of domain patterns, matched case-insensitively and ignoring a trailing dot.
#[derive(Clone, Debug, Default)]
pub struct DomainSet {
    exact: Vec<String>,
    suffixes: Vec<String>,
    every_domain: bool,
}

impl DomainSet {
    /// Builds the set. `*.example.org` matches every subdomain of `example.org` but not
    /// `example.org` itself, as in Postfix's and MTA-STS's wildcard rules, and `*` alone
    /// matches every domain, after every other pattern.
    pub fn new(patterns: &[String]) -> DomainSet {
        let mut set = DomainSet::default();
        for pattern in patterns {
            let pattern = normalize(pattern);
            if pattern == "*" {
                set.every_domain = true;
                continue;
            }
            match pattern.strip_prefix("*.") {
                Some(suffix) => set.suffixes.push(format!(".{suffix}")),
                None => set.exact.push(pattern),
            }
        }
        set
    }

    /// The pattern that matches `domain`, as written in the config less case.
    pub fn matching_rule(&self, domain: &str) -> Option<String> {
        let domain = normalize(domain);
        if domain.is_empty() {
            return None;
        }
        if let Some(exact) = self.exact.iter().find(|exact| **exact == domain) {
            return Some(exact.clone());
        }
        self.suffixes
            .iter()
            .filter(|suffix| domain.ends_with(suffix.as_str()))
            .max_by_key(|suffix| suffix.len())
            .map(|suffix| format!("*{suffix}"))
            .or_else(|| self.every_domain.then(|| "*".to_string()))
    }

    /// True when some pattern matches.
    pub fn contains(&self, domain: &str) -> bool {
        self.matching_rule(domain).is_some()
    }
}

fn normalize(domain: &str) -> String {
    domain.trim().trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_suffix_patterns() {
        let set = DomainSet::new(&["nhs.net".into(), "*.nhs.uk".into()]);
        let cases = [
            ("nhs.net", Some("nhs.net")),
            ("NHS.Net.", Some("nhs.net")),
            ("mail.nhs.net", None),
            ("trust.nhs.uk", Some("*.nhs.uk")),
            ("a.b.nhs.uk", Some("*.nhs.uk")),
            ("nhs.uk", None),
            ("evilnhs.uk", None),
            ("", None),
        ];
        for (domain, expected) in cases {
            assert_eq!(set.matching_rule(domain).as_deref(), expected, "{domain}");
        }
        let set = DomainSet::new(&["*".into(), "nhs.net".into()]);
        let cases = [
            ("nhs.net", Some("nhs.net")),
            ("anything.example", Some("*")),
            ("", None),
        ];
        for (domain, expected) in cases {
            assert_eq!(set.matching_rule(domain).as_deref(), expected, "{domain}");
        }
    }
}
