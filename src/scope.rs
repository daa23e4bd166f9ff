//! Route rules: which paths need an account token, and which path segment must equal which
//! claim. The defaults cover the Commerce API; `[[routes]]` in the configuration come first.
//!
//! A rule's path is literal segments and placeholders: `{account_id}` binds the token's account
//! (`scope`) to that segment, `{member_id}` binds its member (`sub`). A rule matches its path
//! and everything below it. Rules are matched on the request's [`CanonicalTarget`], literals
//! case-insensitively, and the matching rule's literals are forwarded in the rule's spelling: so
//! `/V2/Accounts/B` cannot slip past the rule for `/v2/accounts/{account_id}` on an upstream that
//! routes case-insensitively, and a case-sensitive upstream reads the route that was checked.

use std::ops::Range;

use http::Uri;
use serde::{Deserialize, Serialize};

pub use crate::target::{CanonicalTarget, PathError};

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

/// Where a request goes, decided on its canonical target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// The token endpoint (`signup.path`): token requests and logout.
    TokenEndpoint,
    /// Anything else, with what the first matching rule requires.
    Rule(TokenRequirement),
}

/// What the rules say about one request: its canonical target, the route, and the path segment
/// bound to a claim.
#[derive(Debug, Clone)]
pub struct Route {
    /// The target every decision is made on, and exactly what is forwarded.
    pub target: CanonicalTarget,
    pub kind: RouteKind,
    /// The claim to compare, and where in the path the segment it must equal is.
    binding: Option<(Binding, Range<usize>)>,
}

impl Route {
    /// The claim to compare, and the path segment it must equal.
    pub fn binding(&self) -> Option<(Binding, &str)> {
        let (binding, range) = self.binding.as_ref()?;
        Some((*binding, self.target.path().get(range.clone())?))
    }

    /// What the route requires of the token (the token endpoint's own checks aside).
    pub fn requirement(&self) -> TokenRequirement {
        match self.kind {
            RouteKind::TokenEndpoint => TokenRequirement::Off,
            RouteKind::Rule(requirement) => requirement,
        }
    }
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
                s => Segment::Literal(s.to_owned()),
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

    /// Whether this rule matches the segments of `target` (as a prefix): the binding, and the
    /// fixed segments the client spelled in another case.
    fn matches(&self, target: &CanonicalTarget) -> Option<Match<'_>> {
        let segments = target.segments();
        if segments.len() < self.segments.len() {
            return None;
        }
        let mut found = Match::default();
        for (pattern, range) in self.segments.iter().zip(segments) {
            match pattern {
                Segment::Literal(literal) => {
                    let actual = target.segment(range);
                    if literal != actual {
                        if !literal.eq_ignore_ascii_case(actual) {
                            return None;
                        }
                        found.respell.push((range.clone(), literal));
                    }
                }
                Segment::Placeholder(kind) => found.binding = Some((*kind, range.clone())),
            }
        }
        Some(found)
    }
}

/// A rule's match on one path.
#[derive(Default)]
struct Match<'r> {
    binding: Option<(Binding, Range<usize>)>,
    /// Fixed segments to forward in the rule's spelling.
    respell: Vec<(Range<usize>, &'r str)>,
}

/// The rule set: the token endpoint, then the configured rules, then the defaults, then
/// "optional" for the rest.
#[derive(Debug, Clone)]
pub struct Rules {
    /// `signup.path`, matched exactly (case-insensitively, one trailing `/` allowed); `None`
    /// for a path that is no pattern (the configuration refuses those).
    token_endpoint: Option<Rule>,
    rules: Vec<Rule>,
}

impl Rules {
    /// The defaults for the Commerce API, after `configured`, with the token endpoint at
    /// `token_path` before all: it is the sign-up route, never a `{member_id}`.
    pub fn new(configured: Vec<Rule>, token_path: &str) -> Rules {
        let token_endpoint = Rule::new(token_path, TokenRequirement::Off).ok();
        let mut rules = configured;
        rules.extend(Self::defaults());
        Rules {
            token_endpoint,
            rules,
        }
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

    /// The route of a request to `uri`: its canonical target, refused when it has none. The
    /// first matching rule wins; with none, a token is optional. The fixed segments of the
    /// matching rule are forwarded in the rule's spelling, so every upstream reads the route
    /// that was checked whatever case the client used.
    pub fn route(&self, uri: &Uri) -> Result<Route, PathError> {
        let target = CanonicalTarget::parse(uri)?;
        if target.path() == "*" {
            return Ok(Route {
                target,
                kind: RouteKind::Rule(TokenRequirement::Optional),
                binding: None,
            });
        }
        let token_endpoint = self
            .token_endpoint
            .as_ref()
            .filter(|endpoint| endpoint.segments.len() == target.segments().len())
            .and_then(|endpoint| endpoint.matches(&target));
        let (kind, found) = match token_endpoint {
            Some(found) => (RouteKind::TokenEndpoint, found),
            None => match self
                .rules
                .iter()
                .find_map(|rule| Some((rule.requirement, rule.matches(&target)?)))
            {
                Some((requirement, found)) => (RouteKind::Rule(requirement), found),
                None => (
                    RouteKind::Rule(TokenRequirement::Optional),
                    Match::default(),
                ),
            },
        };
        let target = if found.respell.is_empty() {
            target
        } else {
            target.respell(&found.respell)
        };
        Ok(Route {
            target,
            kind,
            binding: found.binding,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TokenRequirement::*;

    fn rules() -> Rules {
        Rules::new(vec![], "/v2/account-members/tokens")
    }

    fn route(rules: &Rules, target: &str) -> Result<Route, PathError> {
        rules.route(&target.parse().expect("a URI"))
    }

    fn decide(target: &str) -> (RouteKind, Option<(Binding, String)>) {
        let route = route(&rules(), target).expect("a route");
        let binding = route.binding().map(|(b, id)| (b, id.to_owned()));
        (route.kind, binding)
    }

    #[test]
    fn defaults_cover_the_commerce_api() {
        let account = |id: &str| Some((Binding::Account, id.to_owned()));
        let required = RouteKind::Rule(Required);
        let optional = RouteKind::Rule(Optional);
        assert_eq!(decide("/v2/accounts/A"), (required, account("A")));
        assert_eq!(
            decide("/v2/accounts/A/addresses/x"),
            (required, account("A"))
        );
        assert_eq!(
            decide("/v2/account-members/M"),
            (required, Some((Binding::Member, "M".to_owned())))
        );
        assert_eq!(decide("/v2/carts"), (optional, None));
        assert_eq!(decide("/v2/carts/c1/items"), (optional, None));
        assert_eq!(decide("/v2/products"), (optional, None));
        assert_eq!(decide("/v2/accounts"), (optional, None));
        assert_eq!(decide("/"), (optional, None));
        assert_eq!(decide("*"), (optional, None));
        // The token endpoint is never a member id, however it is spelled.
        for spelling in [
            "/v2/account-members/tokens",
            "/v2/account-members/tokens/",
            "/V2/Account-Members/Tokens",
            "/v2/account%2Dmembers/%74okens?x=1",
        ] {
            assert_eq!(
                decide(spelling),
                (RouteKind::TokenEndpoint, None),
                "{spelling}"
            );
        }
        // Below it is not the token endpoint: the member rule binds the member `tokens`.
        assert_eq!(
            decide("/v2/account-members/tokens/x"),
            (required, Some((Binding::Member, "tokens".to_owned())))
        );
    }

    #[test]
    fn fixed_segments_are_forwarded_in_the_rules_spelling_and_ids_as_sent() {
        let route = route(&rules(), "/V2/ACCOUNTS/AbC/Addresses?Q=1").unwrap();
        assert_eq!(route.binding(), Some((Binding::Account, "AbC")));
        assert_eq!(
            route.target.path_and_query().as_str(),
            "/v2/accounts/AbC/Addresses?Q=1"
        );
        assert!(route.target.rewritten());
        let route = route_of("/v2/%61ccounts/B");
        assert_eq!(route.target.path(), "/v2/accounts/B");
        assert_eq!(route.binding(), Some((Binding::Account, "B")));
        let route = route_of("/V2/Account-Members/Tokens/");
        assert_eq!(route.target.path(), "/v2/account-members/tokens/");
        assert!(!route_of("/v2/accounts/B").target.rewritten());
    }

    fn route_of(target: &str) -> Route {
        route(&rules(), target).expect("a route")
    }

    #[test]
    fn paths_that_could_resolve_elsewhere_are_refused() {
        for path in [
            "/v2/accounts/A/../B",
            "/v2/accounts/./B",
            "/v2/accounts//B",
            "/v2/accounts/A%2F..%2FB",
            "/v2/accounts/%2e%2e",
            "/v2/accounts/%2E%2E/B",
            "/v2/accounts/A%2f",
            "/v2/accounts/A%5CB",
            "/v2/accounts/A%5c",
            "/v2/accounts/A//",
            "/v2/accounts;x/B",
            "/v2/accounts/A%2",
            "//",
            "/v2/accounts/..",
        ] {
            assert!(route(&rules(), path).is_err(), "{path}");
        }
        for path in ["/v2/carts/", "/", "/v2/accounts/A%20B", "/v2/a.b/..c"] {
            assert!(route(&rules(), path).is_ok(), "{path}");
        }
    }

    #[test]
    fn configured_rules_come_first() {
        let r = Rules::new(
            vec![Rule::new("/v2/accounts/{account_id}/public", Off).unwrap()],
            "/v2/account-members/tokens",
        );
        assert_eq!(
            route(&r, "/v2/accounts/A/public").unwrap().kind,
            RouteKind::Rule(Off)
        );
        assert_eq!(
            route(&r, "/v2/accounts/A/private").unwrap().kind,
            RouteKind::Rule(Required)
        );
    }

    #[test]
    fn a_token_path_that_is_no_pattern_makes_no_token_endpoint() {
        // The configuration refuses such a path; were it let through, `/` must not become the
        // token endpoint.
        let r = Rules::new(vec![], "no-slash");
        assert_eq!(route(&r, "/").unwrap().kind, RouteKind::Rule(Optional));
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
