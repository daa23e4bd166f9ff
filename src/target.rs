//! The canonical request target: one spelling of the path, computed once at the edge, that every
//! decision is made on and that is exactly what the upstream receives.
//!
//! Upstreams and the frameworks behind them are lenient in different ways: some decode `%XX`
//! once (or twice), drop `;parameters`, resolve dot segments, merge slashes, treat `\` as `/`,
//! or match routes case-insensitively. Each ambiguity has one action here, chosen so that no such
//! upstream can resolve the forwarded path to another account or member than the one checked
//! (the reference points are Envoy's `normalize_path`, `merge_slashes` and
//! `path_with_escaped_slashes_action`):
//!
//! | spelling | action |
//! |---|---|
//! | `%XX` of an unreserved character (`A-Z a-z 0-9 - . _ ~`, RFC 3986 §2.3) | decoded (§6.2.2.2) |
//! | any other `%xx` | kept, hex digits upper-cased (§6.2.2.1) |
//! | `%2F` `%5C` `%3B` `%3F` `%23` `%00` and other controls | refused: decoded, each is a separator or ends the path |
//! | `%25` | refused: a server that decodes twice would read another path (`%252F` is `/`) |
//! | `%` not followed by two hex digits | refused: decoders disagree on it |
//! | `\` | refused: some servers read it as `/` |
//! | `;` | refused: some servers drop `;parameters` from a segment |
//! | `.` and `..` segments (also once decoded) | refused, never resolved |
//! | empty segments (`//`) | refused, never merged |
//! | one trailing `/` | kept; the rules match as without it |
//! | case of the fixed segments a rule names | matched case-insensitively, forwarded in the rule's spelling (see `scope`) |
//! | absolute-form target (`GET http://host/path`) | scheme and authority dropped: the path alone is forwarded, to the configured upstream |
//! | `*` (`OPTIONS *`) | forwarded as is; matches no rule |
//!
//! The query is neither decoded nor changed: no route decision reads it.
//!
//! Hand-written because no crate in the tree does this: the `http` crate parses but never
//! normalises, and a percent-decoding crate decodes everything, which would turn `%2F` into a
//! separator instead of refusing it.

use std::ops::Range;

use http::uri::PathAndQuery;
use http::Uri;

/// Why a request target is refused (400 `path_not_normalized`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A `.` or `..` segment, literal or percent-encoded.
    #[error("the path has a dot segment (`.` or `..`)")]
    DotSegment,
    /// `//` inside the path.
    #[error("the path has an empty segment (`//`)")]
    EmptySegment,
    /// `%2F`, `%5C`, `%3B`, `%3F`, `%23` or an encoded control character.
    #[error(
        "the path has an encoded separator or control character (such as %2F, %5C, %3B or %00)"
    )]
    EncodedSeparator,
    /// `%25`: an encoded `%`, which a second decoding turns into another escape.
    #[error("the path has an encoded percent sign (%25), which a second decoding would change")]
    DoubleEncoded,
    /// `%` not followed by two hex digits.
    #[error("the path has a malformed percent-encoding")]
    BadEscape,
    /// A backslash.
    #[error("the path has a backslash")]
    Backslash,
    /// A `;`: path parameters.
    #[error("the path has `;` parameters")]
    Parameters,
    /// Neither `/…` nor `*`.
    #[error("the request target is not an absolute path")]
    NotAbsolute,
}

/// A request target in canonical form. Only [`CanonicalTarget::parse`] makes one, so code that
/// takes this type can rely on it being the spelling that is forwarded.
#[derive(Debug, Clone)]
pub struct CanonicalTarget {
    /// The canonical path and the query, as forwarded.
    path_and_query: PathAndQuery,
    /// Whether this differs from what the client sent (or the client sent an absolute form):
    /// then the request's URI must be replaced before forwarding.
    rewritten: bool,
    /// Where the path's segments are, found by the same pass that checked them.
    segments: Vec<Range<usize>>,
}

impl CanonicalTarget {
    /// The canonical form of `uri`'s target, or why there is none.
    pub fn parse(uri: &Uri) -> Result<CanonicalTarget, PathError> {
        let absolute = uri.scheme().is_some() || uri.authority().is_some();
        let path = uri.path();
        if path == "*" {
            return Ok(CanonicalTarget {
                path_and_query: PathAndQuery::from_static("*"),
                rewritten: absolute,
                segments: Vec::new(),
            });
        }
        if !path.starts_with('/') {
            return Err(PathError::NotAbsolute);
        }
        // Nearly every request: one pass over the bytes the client sent, no copy.
        let (segments, escaped) = scan(path)?;
        if !escaped && !absolute {
            return Ok(CanonicalTarget {
                path_and_query: uri
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/")),
                rewritten: false,
                segments,
            });
        }
        let (path, segments) = match normalise_escapes(path)? {
            // Decoding may have made a dot segment (`%2e%2e`): the decoded path is checked anew.
            Some(decoded) => {
                let (segments, _) = scan(&decoded)?;
                (decoded, segments)
            }
            None => (path.to_owned(), segments),
        };
        Ok(CanonicalTarget {
            path_and_query: with_query(path, uri.query())?,
            rewritten: true,
            segments,
        })
    }

    /// The canonical path.
    pub fn path(&self) -> &str {
        self.path_and_query.path()
    }

    /// The path and query as forwarded.
    pub fn path_and_query(&self) -> &PathAndQuery {
        &self.path_and_query
    }

    /// Whether the request's URI must be replaced by this form before forwarding.
    pub fn rewritten(&self) -> bool {
        self.rewritten
    }

    /// The byte ranges of the path's segments in [`CanonicalTarget::path`]; a trailing `/` adds
    /// no segment. Empty for `/` and `*`.
    pub fn segments(&self) -> &[Range<usize>] {
        &self.segments
    }

    /// The segment at `range` (one of [`CanonicalTarget::segments`]).
    pub fn segment(&self, range: &Range<usize>) -> &str {
        self.path().get(range.clone()).unwrap_or("")
    }

    /// This target with the segments at `ranges` spelled as given (same length, differing only
    /// in ASCII case): how a rule's fixed segments are forwarded in the rule's spelling.
    pub(crate) fn respell(self, spellings: &[(Range<usize>, &str)]) -> CanonicalTarget {
        let mut path = self.path().to_owned();
        for (range, spelling) in spellings {
            if path
                .get(range.clone())
                .is_some_and(|s| s.eq_ignore_ascii_case(spelling))
            {
                path.replace_range(range.clone(), spelling);
            }
        }
        match with_query(path, self.path_and_query.query()) {
            Ok(path_and_query) => CanonicalTarget {
                path_and_query,
                rewritten: true,
                segments: self.segments,
            },
            // Only ASCII letters changed case: still a valid target.
            Err(_) => self,
        }
    }

    /// The URI to forward when the target was rewritten: the canonical origin form (the
    /// upstream client sets the authority it needs); `None` when the client's URI stands.
    pub fn rewritten_uri(&self) -> Option<Uri> {
        if !self.rewritten {
            return None;
        }
        let mut parts = http::uri::Parts::default();
        parts.path_and_query = Some(self.path_and_query.clone());
        Uri::from_parts(parts).ok()
    }
}

fn with_query(path: String, query: Option<&str>) -> Result<PathAndQuery, PathError> {
    let mut target = path;
    if let Some(query) = query {
        target.push('?');
        target.push_str(query);
    }
    PathAndQuery::try_from(target).map_err(|_| PathError::BadEscape)
}

/// Decodes the escapes of unreserved characters and upper-cases the rest; `None` when the path
/// is already in that form (the common case costs one scan and no allocation).
fn normalise_escapes(path: &str) -> Result<Option<String>, PathError> {
    let bytes = path.as_bytes();
    let Some(first) = bytes.iter().position(|&b| b == b'%') else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(&bytes[..first]);
    let mut i = first;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let value = escape_at(bytes, i).ok_or(PathError::BadEscape)?;
        match value {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(value),
            b'/' | b'\\' | b';' | b'?' | b'#' | 0x00..=0x1f | 0x7f => {
                return Err(PathError::EncodedSeparator)
            }
            b'%' => return Err(PathError::DoubleEncoded),
            _ => {
                out.push(b'%');
                out.extend_from_slice(&hex_upper(value));
            }
        }
        i += 3;
    }
    if out == bytes {
        return Ok(None);
    }
    // Only ASCII was removed or rewritten, and every other byte was copied as it was.
    String::from_utf8(out)
        .map(Some)
        .map_err(|_| PathError::BadEscape)
}

/// The byte `%XX` at `i` encodes, if `bytes[i..]` starts with one.
fn escape_at(bytes: &[u8], i: usize) -> Option<u8> {
    match bytes.get(i..i + 3) {
        Some([b'%', hi, lo]) => Some(hex_value(*hi)? << 4 | hex_value(*lo)?),
        _ => None,
    }
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

fn hex_upper(value: u8) -> [u8; 2] {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    [
        DIGITS[usize::from(value >> 4)],
        DIGITS[usize::from(value & 0xf)],
    ]
}

/// One pass over a path starting with `/`: the byte ranges of its segments, and whether it holds
/// a `%`. Refuses `\`, `;`, dot segments and empty segments (one trailing `/` is ordinary).
fn scan(path: &str) -> Result<(Vec<Range<usize>>, bool), PathError> {
    let bytes = path.as_bytes();
    let end = bytes.len();
    let mut segments = Vec::with_capacity(8);
    let mut escaped = false;
    let mut start = 1;
    for i in 1..=end {
        // The end of the path closes the last segment as a `/` would.
        match bytes.get(i).copied().unwrap_or(b'/') {
            b'/' => {
                match &bytes[start..i] {
                    // `/` alone, or one trailing `/`.
                    [] if i == end => {}
                    [] => return Err(PathError::EmptySegment),
                    b"." | b".." => return Err(PathError::DotSegment),
                    _ => segments.push(start..i),
                }
                start = i + 1;
            }
            b'%' => escaped = true,
            b';' => return Err(PathError::Parameters),
            b'\\' => return Err(PathError::Backslash),
            _ => {}
        }
    }
    Ok((segments, escaped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(target: &str) -> Result<String, PathError> {
        let uri: Uri = target.parse().expect("a URI");
        CanonicalTarget::parse(&uri).map(|t| t.path_and_query().as_str().to_owned())
    }

    #[test]
    fn ordinary_paths_are_kept_as_sent() {
        for target in ["/", "/v2/accounts/A", "/v2/carts/", "/v2/x?q=%2F;..//", "*"] {
            let uri: Uri = target.parse().expect("uri");
            let t = CanonicalTarget::parse(&uri).expect("canonical");
            assert!(!t.rewritten(), "{target}");
            assert_eq!(t.path_and_query().as_str(), target);
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_upper_cased() {
        assert_eq!(canonical("/v2/%61ccounts/B").unwrap(), "/v2/accounts/B");
        assert_eq!(
            canonical("/v2/account%2Dmembers/M").unwrap(),
            "/v2/account-members/M"
        );
        assert_eq!(canonical("/v2/%7e%5f%2e%41").unwrap(), "/v2/~_.A");
        assert_eq!(canonical("/caf%c3%a9?x=%61").unwrap(), "/caf%C3%A9?x=%61");
        assert_eq!(canonical("/a%20b").unwrap(), "/a%20b");
    }

    #[test]
    fn absolute_form_becomes_origin_form() {
        let uri: Uri = "http://evil.example/v2/accounts/B?x=1".parse().unwrap();
        let t = CanonicalTarget::parse(&uri).unwrap();
        assert!(t.rewritten());
        assert_eq!(t.rewritten_uri().unwrap().to_string(), "/v2/accounts/B?x=1");
    }

    #[test]
    fn ambiguous_spellings_are_refused() {
        use PathError::*;
        for (target, error) in [
            ("/v2/accounts/A/../B", DotSegment),
            ("/v2/accounts/./B", DotSegment),
            ("/v2/accounts/%2e%2E/B", DotSegment),
            ("/v2/accounts/%2E", DotSegment),
            ("/v2/accounts//B", EmptySegment),
            ("//v2", EmptySegment),
            ("/v2/accounts/A//", EmptySegment),
            ("/v2/accounts/A%2F..%2FB", EncodedSeparator),
            ("/v2/accounts/A%2f", EncodedSeparator),
            ("/v2/accounts/A%5c", EncodedSeparator),
            ("/v2/accounts%3Bx/B", EncodedSeparator),
            ("/v2/accounts%3F/B", EncodedSeparator),
            ("/v2/accounts%23/B", EncodedSeparator),
            ("/v2/accounts/A%00", EncodedSeparator),
            ("/v2/accounts/A%0a", EncodedSeparator),
            ("/v2/%2561ccounts/B", DoubleEncoded),
            ("/v2/%252F", DoubleEncoded),
            ("/v2/%25%341", DoubleEncoded),
            ("/a%25", DoubleEncoded),
            ("/v2/accounts/A%2", BadEscape),
            ("/v2/accounts/A%zz", BadEscape),
            ("/v2/accounts;x/B", Parameters),
            ("/v2;x/accounts/B", Parameters),
            ("/v2/accounts/B;", Parameters),
        ] {
            assert_eq!(canonical(target), Err(error), "{target}");
        }
    }

    #[test]
    fn segments_carry_their_ranges() {
        let uri: Uri = "/v2/%61ccounts/B/".parse().unwrap();
        let t = CanonicalTarget::parse(&uri).unwrap();
        let segments: Vec<&str> = t.segments().iter().map(|r| t.segment(r)).collect();
        assert_eq!(segments, ["v2", "accounts", "B"]);
        assert_eq!(t.segments(), [1..3, 4..12, 13..14]);
        for target in ["/", "*", "http://h"] {
            let uri: Uri = target.parse().unwrap();
            assert!(CanonicalTarget::parse(&uri).unwrap().segments().is_empty());
        }
    }

    #[test]
    fn respelling_changes_only_case() {
        let uri: Uri = "/V2/Accounts/B?q".parse().unwrap();
        let t = CanonicalTarget::parse(&uri).unwrap();
        let t = t.respell(&[(1..3, "v2"), (4..12, "accounts")]);
        assert_eq!(t.path_and_query().as_str(), "/v2/accounts/B?q");
        assert!(t.rewritten());
    }
}
