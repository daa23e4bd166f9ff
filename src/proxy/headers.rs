//! Header rewriting between client and upstream: hop-by-hop removal (RFC 9110 §7.6.1),
//! `X-Forwarded-*`, and request ids.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `X-Request-Id`: kept when the client sends a sane one, generated otherwise, echoed back.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that describe one connection, never the message, and so never cross a proxy.
/// RFC 9110 §7.6.1 names `Connection`, `Proxy-Connection`, `Keep-Alive`, `TE`,
/// `Transfer-Encoding` and `Upgrade`; `Trailer` and the `Proxy-Auth*` pair are the rest of the
/// classic RFC 2616 list, which proxies still strip.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// Removes the hop-by-hop headers, including every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the (few) names notes which of the fixed list are present; most requests
    // carry none, and most answers only `Connection: keep-alive`.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // `HOP_BY_HOP[0]` is `Connection`. Its options beyond the fixed list are looked up by their
    // text, and only those present are copied out (the names live in values of the map about to
    // change): the usual `keep-alive` or `close` costs no allocation.
    if present & 1 != 0 {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|option| {
                !HOP_BY_HOP
                    .iter()
                    .any(|hop| option.eq_ignore_ascii_case(hop.as_str()))
                    && headers.contains_key(*option)
            })
            .filter_map(|option| HeaderName::from_bytes(option.as_bytes()).ok())
            .collect();
        for name in &named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Header names removed from every request, with a filter that makes the usual case (none
/// present) cost one bit test per header instead of a comparison with every name.
#[derive(Debug, Clone, Default)]
pub struct Removed {
    names: Vec<HeaderName>,
    /// Bit `n` set when a name is `n` bytes long (names of 64 bytes or more set bit 63).
    lengths: u64,
}

impl Removed {
    /// Removes `names` (each once).
    pub fn new(names: impl IntoIterator<Item = HeaderName>) -> Self {
        let mut removed = Removed::default();
        for name in names {
            if !removed.names.contains(&name) {
                removed.lengths |= length_bit(name.as_str().len());
                removed.names.push(name);
            }
        }
        removed
    }

    /// Removes every header of the set from `headers`.
    pub fn strip(&self, headers: &mut HeaderMap) {
        let present = headers.keys().any(|key| {
            self.lengths & length_bit(key.as_str().len()) != 0 && self.names.contains(key)
        });
        if present {
            for name in &self.names {
                headers.remove(name);
            }
        }
    }
}

fn length_bit(len: usize) -> u64 {
    1 << len.min(63)
}

/// The request id to use: the client's when it is short, visible ASCII, else a new UUID.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    let client = headers.get(&X_REQUEST_ID).filter(|v| {
        let bytes = v.as_bytes();
        !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic())
    });
    match client {
        Some(value) => value.clone(),
        None => {
            let mut buf = uuid::Uuid::encode_buffer();
            let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
            // A hyphenated UUID is always a valid header value.
            HeaderValue::from_str(id).unwrap_or(HeaderValue::from_static("invalid"))
        }
    }
}

/// The client's address: the connection's peer, or with `trusted_hops` proxies in front (each
/// appending the address it saw to `X-Forwarded-For`), the entry that many places from the right.
/// Entries further left were written by the client itself and prove nothing.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted_hops: usize) -> IpAddr {
    if trusted_hops == 0 {
        return peer;
    }
    let entries: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    entries
        .len()
        .checked_sub(trusted_hops)
        .and_then(|i| entries.get(i))
        .and_then(|entry| entry.parse().ok())
        .unwrap_or(peer)
}

/// Sets `X-Forwarded-For` (appending the peer to what earlier proxies wrote), and
/// `X-Forwarded-Proto` / `-Host` for the hop the client made to us.
pub fn set_forwarded(headers: &mut HeaderMap, peer: IpAddr, host: Option<HeaderValue>) {
    let mut xff = String::with_capacity(64);
    if let Some(Ok(previous)) = headers.get(&X_FORWARDED_FOR).map(HeaderValue::to_str) {
        if !previous.trim().is_empty() {
            xff.push_str(previous);
            xff.push_str(", ");
        }
    }
    push_ip(&mut xff, peer);
    // A list of IP addresses and the client's own visible-ASCII value are valid header values.
    if let Ok(value) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    match host {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
}

/// Appends `ip` in its usual text form; IPv4 (every request on the usual deployments) without
/// the formatting machinery, which costs more than the rest of `set_forwarded`.
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(_) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{ip}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_headers_go_whatever_their_case_and_the_rest_stay() {
        let removed = Removed::new(
            ["x-account-id", "X-Original-URL", "x-account-id"]
                .map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap()),
        );
        let mut headers = HeaderMap::new();
        headers.insert("x-original-url", HeaderValue::from_static("/other"));
        headers.append("X-Account-Id", HeaderValue::from_static("a"));
        headers.append("x-account-id", HeaderValue::from_static("b"));
        headers.insert("x-original-uri", HeaderValue::from_static("/kept"));
        headers.insert(header::HOST, HeaderValue::from_static("h"));
        removed.strip(&mut headers);
        assert!(!headers.contains_key("x-original-url"));
        assert!(!headers.contains_key("x-account-id"));
        assert_eq!(headers.len(), 2);
        // Nothing to remove: nothing changes.
        removed.strip(&mut headers);
        assert_eq!(headers.len(), 2);
    }

    #[test]
    fn strips_listed_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, X-Secret-Hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn connection_options_are_matched_without_regard_to_case() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Keep-Alive, Close"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("close", HeaderValue::from_static("named by an option"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));

        // The usual answer: only `Connection: keep-alive`.
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn request_id_kept_only_when_sane() {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("has space"));
        assert_eq!(request_id(&h).len(), 36);
        assert_eq!(request_id(&HeaderMap::new()).len(), 36);
    }

    #[test]
    fn client_ip_counts_trusted_hops_from_the_right() {
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 198.51.100.7"),
        );
        assert_eq!(client_ip(peer, &h, 0), peer);
        assert_eq!(client_ip(peer, &h, 1).to_string(), "198.51.100.7");
        assert_eq!(client_ip(peer, &h, 2).to_string(), "6.6.6.6");
        assert_eq!(client_ip(peer, &h, 3), peer, "fewer entries than hops");
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        set_forwarded(&mut h, "127.0.0.1".parse().unwrap(), None);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
    }

    #[test]
    fn addresses_are_written_as_std_writes_them() {
        for ip in [
            "0.0.0.0",
            "10.0.9.99",
            "100.20.3.255",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = String::new();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string());
        }
    }
}
