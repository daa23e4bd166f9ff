//! Route rules: which paths need an account token, and which path segment must equal which
//! claim. The defaults cover the Commerce API; `[[routes]]` in the configuration come first.
//!
//! A rule's path is literal segments and placeholders: `{account_id}` binds the token's account
//! (`scope`) to that segment, `{member_id}` binds its member (`sub`). A rule matches its path
//! and everything below it. Literals match case-insensitively, so `/V2/Accounts/B` cannot slip
//! past the rule for `/v2/accounts/{account_id}` on an upstream that routes case-insensitively.

use serde::{Deserialize, Serialize};

/// Whether a route needs a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenRequirement {
    /// No token: 401 `token_missing`. A token is validated.
    #[default]
    Required,
    /// A token, when present, is validated; without one the request passes.
    Optional,
    /// No checks at all: the token header passes untouched.
    Off,
}

/// `[[routes]]` in the file: a path pattern and what it requires.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteConfig {
    /// `/v2/accounts/{account_id}`: literal segments and at most one placeholder.
    pub path: String,
    /// `required`, `optional` or `off`.
    pub token: TokenRequirement,
}

/// Which claim a path segment must equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// The token's account (`scope`) must equal this segment.
    Account,
    /// The token's member (`sub`) must equal this segment.
    Member,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Placeholder(Binding),
}

/// One compiled rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    segments: Vec<Segment>,
    /// What a matching request needs.
    pub requirement: TokenRequirement,
}

/// What the rules say about one request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'a> {
    pub requirement: TokenRequirement,
    /// The claim to compare, and the path segment it must equal.
    pub binding: Option<(Binding, &'a str)>,
}

/// Why a path cannot be checked safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `.`/`..` segments, empty segments or encoded `/`, `.` or `\`: the upstream might
    /// resolve it to another account than the one checked.
    #[error("the path is not in normal form (dot segments, empty segments or encoded separators)")]
    NotNormalized,
}

/// Why a rule's pattern is invalid (configuration error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("must start with '/'")]
    NotAbsolute,
    #[error("unknown placeholder {0:?} (use {{account_id}} or {{member_id}})")]
    UnknownPlaceholder(String),
    #[error("at most one placeholder per rule")]
    TwoPlaceholders,
    #[error("empty segment")]
    EmptySegment,
}

impl Rule {
    /// Compiles `path` with `requirement`.
    pub fn new(path: &str, requirement: TokenRequirement) -> Result<Rule, PatternError> {
        let rest = path.strip_prefix('/').ok_or(PatternError::NotAbsolute)?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let mut segments = Vec::new();
        for segment in rest.split('/').filter(|_| !rest.is_empty()) {
            segments.push(match segment {
                "" => return Err(PatternError::EmptySegment),
                "{account_id}" => Segment::Placeholder(Binding::Account),
                "{member_id}" => Segment::Placeholder(Binding::Member),
                s if s.starts_with('{') => {
                    return Err(PatternError::UnknownPlaceholder(s.to_owned()))
                }
                s => Segment::Literal(s.to_ascii_lowercase()),
            });
        }
        let placeholders = segments
            .iter()
            .filter(|s| matches!(s, Segment::Placeholder(_)))
            .count();
        if placeholders > 1 {
            return Err(PatternError::TwoPlaceholders);
        }
        Ok(Rule {
            segments,
            requirement,
        })
    }

    /// The binding of `segments` if this rule matches them (as a prefix).
    fn matches<'a>(&self, segments: &[&'a str]) -> Option<Option<(Binding, &'a str)>> {
        if segments.len() < self.segments.len() {
            return None;
        }
        let mut binding = None;
        for (pattern, actual) in self.segments.iter().zip(segments) {
            match pattern {
                Segment::Literal(literal) => {
                    if !literal.eq_ignore_ascii_case(actual) {
                        return None;
                    }
                }
                Segment::Placeholder(kind) => binding = Some((*kind, *actual)),
            }
        }
        Some(binding)
    }
}

/// The rule set: configured rules first, then the defaults, then "optional" for the rest.
#[derive(Debug, Clone)]
pub struct Rules {
    rules: Vec<Rule>,
}

impl Rules {
    /// The defaults for the Commerce API (DESIGN.md), after `configured`. The token endpoint
    /// `token_path` comes before all: it is the sign-up route, never a `{member_id}`.
    pub fn new(configured: Vec<Rule>, token_path: &str) -> Rules {
        let mut rules: Vec<Rule> = Rule::new(token_path, TokenRequirement::Off)
            .into_iter()
            .collect();
        rules.extend(configured);
        rules.extend(Self::defaults());
        Rules { rules }
    }

    fn defaults() -> Vec<Rule> {
        use TokenRequirement::*;
        [
            ("/v2/accounts/{account_id}", Required),
            ("/v2/account-members/{member_id}", Required),
            ("/v2/carts", Optional),
            ("/v2/orders", Optional),
        ]
        .into_iter()
        .filter_map(|(path, requirement)| Rule::new(path, requirement).ok())
        .collect()
    }

    /// What the rules require of `path` (without the query). The first matching rule wins;
    /// with none, a token is optional.
    pub fn decide<'a>(&self, path: &'a str) -> Result<Decision<'a>, PathError> {
        let segments = segments(path)?;
        for rule in &self.rules {
            if let Some(binding) = rule.matches(&segments) {
                return Ok(Decision {
                    requirement: rule.requirement,
                    binding,
                });
            }
        }
        Ok(Decision {
            requirement: TokenRequirement::Optional,
            binding: None,
        })
    }
}

/// The path's segments, refusing any form the upstream could normalise into another path.
pub fn segments(path: &str) -> Result<Vec<&str>, PathError> {
    let rest = path.strip_prefix('/').unwrap_or(path);
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    if has_encoded_separator(rest.as_bytes()) {
        return Err(PathError::NotNormalized);
    }
    // One trailing slash is ordinary (`/v2/carts/`).
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let mut segments = Vec::with_capacity(8);
    for segment in rest.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(PathError::NotNormalized);
        }
        segments.push(segment);
    }
    Ok(segments)
}

/// Whether `path` holds a backslash or a percent-encoded `.`, `/` or `\` (any case): forms an
/// upstream may decode into a dot segment or a separator after the gateway has checked the path.
fn has_encoded_separator(path: &[u8]) -> bool {
    path.iter().enumerate().any(|(i, &b)| {
        b == b'\\'
            || (b == b'%'
                && matches!(
                    path.get(i + 1..i + 3),
                    Some([b'2', b'e' | b'E' | b'f' | b'F'] | [b'5', b'c' | b'C'])
                ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use TokenRequirement::*;

    fn rules() -> Rules {
        Rules::new(vec![], "/v2/account-members/tokens")
    }

    #[test]
    fn defaults_cover_the_commerce_api() {
        let r = rules();
        let d = r.decide("/v2/accounts/A").unwrap();
        assert_eq!(d.requirement, Required);
        assert_eq!(d.binding, Some((Binding::Account, "A")));
        let d = r.decide("/v2/accounts/A/addresses/x").unwrap();
        assert_eq!(d.binding, Some((Binding::Account, "A")));
        let d = r.decide("/v2/account-members/M").unwrap();
        assert_eq!(d.binding, Some((Binding::Member, "M")));
        assert_eq!(r.decide("/v2/carts").unwrap().requirement, Optional);
        assert_eq!(
            r.decide("/v2/carts/c1/items").unwrap().requirement,
            Optional
        );
        assert_eq!(r.decide("/v2/products").unwrap().requirement, Optional);
        assert_eq!(r.decide("/v2/accounts").unwrap().binding, None);
        assert_eq!(r.decide("/").unwrap().requirement, Optional);
        // The token endpoint is never a member id.
        assert_eq!(
            r.decide("/v2/account-members/tokens").unwrap().requirement,
            Off
        );
    }

    #[test]
    fn literals_match_case_insensitively_but_ids_are_kept() {
        let d = rules().decide("/V2/ACCOUNTS/AbC").unwrap();
        assert_eq!(d.binding, Some((Binding::Account, "AbC")));
    }

    #[test]
    fn paths_that_could_resolve_elsewhere_are_refused() {
        for path in [
            "/v2/accounts/A/../B",
            "/v2/accounts/./B",
            "/v2/accounts//B",
            "/v2/accounts/A%2F..%2FB",
            "/v2/accounts/%2e%2e",
            "/v2/accounts/A\\..\\B",
            "/v2/accounts/%2E%2E/B",
            "/v2/accounts/A%2f",
            "/v2/accounts/A%5CB",
            "/v2/accounts/A%5c",
            "/v2/accounts/A//",
            "//",
            "/v2/accounts/..",
        ] {
            assert_eq!(
                rules().decide(path),
                Err(PathError::NotNormalized),
                "{path}"
            );
        }
        for path in [
            "/v2/carts/",
            "/",
            "/v2/accounts/A%20B",
            "/v2/accounts/A%2",
            "/v2/a.b/..c",
        ] {
            assert!(rules().decide(path).is_ok(), "{path}");
        }
    }

    #[test]
    fn configured_rules_come_first() {
        let r = Rules::new(
            vec![Rule::new("/v2/accounts/{account_id}/public", Off).unwrap()],
            "/v2/account-members/tokens",
        );
        assert_eq!(r.decide("/v2/accounts/A/public").unwrap().requirement, Off);
        assert_eq!(
            r.decide("/v2/accounts/A/private").unwrap().requirement,
            Required
        );
    }

    #[test]
    fn bad_patterns() {
        assert_eq!(Rule::new("v2", Off), Err(PatternError::NotAbsolute));
        assert_eq!(
            Rule::new("/v2/{x}", Off),
            Err(PatternError::UnknownPlaceholder("{x}".into()))
        );
        assert_eq!(
            Rule::new("/{account_id}/{member_id}", Off),
            Err(PatternError::TwoPlaceholders)
        );
        assert_eq!(Rule::new("/v2//x", Off), Err(PatternError::EmptySegment));
        assert!(Rule::new("/", Off).is_ok());
    }
}
