//! The hostile token-request corpus: every file in `tests/corpus/signup/` is one request to the
//! token endpoint — a body, its framing and its headers, written to the socket byte for byte —
//! and the answer the gateway must give it. None may reach the upstream.
//!
//! A case file (TOML):
//!
//! ```toml
//! description = "what it is and why it must be refused"
//! body = '{"data":{…}}'              # or body_hex = "…", or [[body_parts]] text/times pieces
//! content_type = "text/plain"        # default application/json; no_content_type = true for none
//! headers = ["X-Extra: 1"]           # further raw header lines
//! framing = "chunked"                # or "length" (the default); chunk = bytes per chunk
//! content_length = "100000"          # overrides the true length (a lie), sent verbatim
//! truncate_body = 10                 # send only this many body bytes …
//! close_write = true                 # … then close the writing half
//! status = 400                       # 0: the connection is closed without an answer
//! code = "missing_field"             # omitted: not an answer the gateway wrote (hyper's own)
//! pointer = "/data/password"         # `source.pointer`, when given
//! ```

mod common;

use std::time::Duration;

use common::raw::RawClient;
use common::upstream::TestUpstream;
use common::{RunningGateway, TestGateway};
use serde::Deserialize;

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus/signup");
const TOKENS: &str = "/v2/account-members/tokens";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    description: String,
    body: Option<String>,
    body_hex: Option<String>,
    #[serde(default)]
    body_parts: Vec<Part>,
    content_type: Option<String>,
    #[serde(default)]
    no_content_type: bool,
    #[serde(default)]
    headers: Vec<String>,
    framing: Option<String>,
    chunk: Option<usize>,
    content_length: Option<String>,
    truncate_body: Option<usize>,
    #[serde(default)]
    close_write: bool,
    status: u16,
    code: Option<String>,
    pointer: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Part {
    text: String,
    times: usize,
}

impl Case {
    fn body(&self) -> Vec<u8> {
        if let Some(hex) = &self.body_hex {
            return hex::decode(hex.replace(' ', "")).expect("body_hex");
        }
        if let Some(body) = &self.body {
            return body.clone().into_bytes();
        }
        self.body_parts
            .iter()
            .flat_map(|part| part.text.repeat(part.times).into_bytes())
            .collect()
    }

    /// The whole request as it goes on the wire.
    fn request(&self) -> Vec<u8> {
        let body = self.body();
        let mut head = format!(
            "POST {TOKENS} HTTP/1.1\r\nHost: storefront.example\r\n\
             Authorization: Bearer store-access-token\r\n"
        );
        if !self.no_content_type {
            let content_type = self.content_type.as_deref().unwrap_or("application/json");
            head.push_str(&format!("Content-Type: {content_type}\r\n"));
        }
        for line in &self.headers {
            head.push_str(line);
            head.push_str("\r\n");
        }
        let sent = &body[..self.truncate_body.unwrap_or(body.len()).min(body.len())];
        let mut wire = Vec::new();
        match self.framing.as_deref().unwrap_or("length") {
            "length" => {
                let length = self
                    .content_length
                    .clone()
                    .unwrap_or_else(|| body.len().to_string());
                head.push_str(&format!("Content-Length: {length}\r\n\r\n"));
                wire.extend_from_slice(head.as_bytes());
                wire.extend_from_slice(sent);
            }
            "chunked" => {
                head.push_str("Transfer-Encoding: chunked\r\n\r\n");
                wire.extend_from_slice(head.as_bytes());
                for piece in sent.chunks(self.chunk.unwrap_or(4096).max(1)) {
                    wire.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                    wire.extend_from_slice(piece);
                    wire.extend_from_slice(b"\r\n");
                }
                if self.truncate_body.is_none() {
                    wire.extend_from_slice(b"0\r\n\r\n");
                }
            }
            "raw" => {
                // The body is the rest of the request, framing included.
                head.push_str("\r\n");
                wire.extend_from_slice(head.as_bytes());
                wire.extend_from_slice(sent);
            }
            other => panic!("unknown framing {other:?}"),
        }
        wire
    }
}

fn load_corpus() -> Vec<(String, Case)> {
    common::load_corpus(CORPUS)
}

/// Sends one case on a fresh connection; what came back (`None`: closed without an answer).
async fn run(gateway: &RunningGateway, case: &Case) -> Option<common::raw::RawAnswer> {
    let mut client = RawClient::connect(gateway.addr).await;
    client.send(&case.request()).await;
    if case.close_write {
        client.close_write().await;
    }
    client.answer(Duration::from_secs(10)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_token_request_is_refused_before_the_upstream() {
    let cases = load_corpus();
    assert!(cases.len() >= 30, "only {} sign-up cases", cases.len());
    let upstream = TestUpstream::http().await;
    let gateway = TestGateway::new(&upstream.url).start().await;

    // Positive control: the same client, framing and headers with a valid body is forwarded.
    let valid = Case {
        description: "a valid password login".into(),
        body: Some(
            r#"{"data":{"type":"account_management_authentication_token","authentication_mechanism":"password","password_profile_id":"p","username":"u@example.com","password":"secret"}}"#
                .into(),
        ),
        ..toml::from_str("description = ''\nstatus = 200").expect("empty case")
    };
    let answer = run(&gateway, &valid).await.expect("an answer");
    assert_eq!(answer.status, 200, "{}", valid.description);
    assert_eq!(upstream.calls(), 1);
    let chunked = Case {
        framing: Some("chunked".into()),
        chunk: Some(7),
        ..toml::from_str(&format!(
            "description = 'chunked'\nstatus = 200\nbody = '{}'",
            valid.body.as_deref().expect("body")
        ))
        .expect("case")
    };
    assert_eq!(run(&gateway, &chunked).await.expect("answer").status, 200);
    assert_eq!(upstream.calls(), 2);

    let mut failures = Vec::new();
    for (name, case) in &cases {
        assert!(!case.description.is_empty(), "{name}: no description");
        let answer = run(&gateway, case).await;
        let status = answer.as_ref().map_or(0, |a| a.status);
        assert!(status < 500, "{name}: {status}");
        let code = answer.as_ref().map(|a| a.code()).unwrap_or_default();
        let pointer = answer.as_ref().map(|a| a.pointer()).unwrap_or_default();
        let mut wrong = status != case.status;
        match &case.code {
            Some(expected) => wrong |= &code != expected,
            // Not the gateway's answer: hyper refused the request before any handler ran.
            None => wrong |= !code.is_empty(),
        }
        if let Some(expected) = &case.pointer {
            wrong |= &pointer != expected;
        }
        if let Some(pointer) = case.pointer.as_ref().or(Some(&pointer)) {
            assert!(
                pointer.is_empty() || pointer.starts_with('/'),
                "{name}: pointer {pointer:?}"
            );
        }
        if wrong {
            failures.push(format!(
                "{name}: expected {} {:?} {:?}, got {status} {code:?} {pointer:?} ({})",
                case.status, case.code, case.pointer, case.description
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        upstream.calls(),
        2,
        "a hostile token request reached the upstream: {:?}",
        upstream.seen().last().map(|s| s.body.clone())
    );
    println!("{} sign-up cases", cases.len());
    gateway.shutdown().await;
}
