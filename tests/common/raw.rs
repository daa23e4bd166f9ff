//! An upstream that answers every request with the same raw bytes, whatever they are: a way to
//! make the upstream misbehave exactly (cut-off bodies, garbage, odd framing).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// A running raw upstream; dropping it stops it.
pub struct RawUpstream {
    pub addr: SocketAddr,
    pub url: String,
    calls: Arc<AtomicUsize>,
    _stop: oneshot::Sender<()>,
}

impl RawUpstream {
    /// Answers each request (read through its `Content-Length` body) with `response`, then
    /// closes the connection.
    pub async fn start(response: Vec<u8>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let calls = Arc::new(AtomicUsize::new(0));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let counter = calls.clone();
        let response = Arc::new(response);
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok((s, _)) => s, Err(_) => continue },
                    _ = &mut stopped => return,
                };
                let (counter, response) = (counter.clone(), response.clone());
                tokio::spawn(async move {
                    let mut stream = stream;
                    if read_request(&mut stream).await.is_some() {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let _ = stream.write_all(&response).await;
                        let _ = stream.shutdown().await;
                    }
                });
            }
        });
        RawUpstream {
            addr,
            url: format!("http://{addr}"),
            calls,
            _stop: stop,
        }
    }

    /// A complete HTTP/1.1 answer with `status`, `content_type` and `body`.
    pub async fn answering(status: u16, content_type: &str, body: &[u8]) -> Self {
        Self::start(http_response(status, content_type, body)).await
    }

    /// How many requests were answered.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// The bytes of a complete HTTP/1.1 answer.
pub fn http_response(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut bytes = format!(
        "HTTP/1.1 {status} Status\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         x-upstream: raw\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Reads one request head and its `Content-Length` body; `None` if the peer went away first.
pub async fn read_request(stream: &mut TcpStream) -> Option<()> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
        if let Some(pos) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
    Some(())
}

/// One answer read off a raw connection.
#[derive(Debug, Clone)]
pub struct RawAnswer {
    pub status: u16,
    /// The head, lower-cased, without the status line.
    pub head: String,
    pub body: Vec<u8>,
}

impl RawAnswer {
    /// The JSON:API `code` of a gateway-written answer, or `""`.
    pub fn code(&self) -> String {
        self.error_member("code")
    }

    /// The JSON:API `source.pointer`, or `""`.
    pub fn pointer(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| {
                v["errors"][0]["source"]["pointer"]
                    .as_str()
                    .map(str::to_owned)
            })
            .unwrap_or_default()
    }

    fn error_member(&self, name: &str) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["errors"][0][name].as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// A client that writes exactly the bytes it is given: for requests no HTTP library would send.
pub struct RawClient {
    pub stream: TcpStream,
    buffer: Vec<u8>,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> Self {
        RawClient {
            stream: TcpStream::connect(addr).await.expect("connect"),
            buffer: Vec::new(),
        }
    }

    /// A client on an already connected stream.
    pub fn from_stream(stream: TcpStream) -> Self {
        RawClient {
            stream,
            buffer: Vec::new(),
        }
    }

    /// Writes `bytes` (errors ignored: the peer may already have given up on us).
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Closes the writing half, as a client that has nothing more to send.
    pub async fn close_write(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// Reads the next answer (Content-Length, chunked or until close); `None` if the connection
    /// closes before a complete head, or nothing arrives within `within`.
    pub async fn answer(&mut self, within: std::time::Duration) -> Option<RawAnswer> {
        tokio::time::timeout(within, self.read_answer())
            .await
            .ok()
            .flatten()
    }

    /// Whether the server closes the connection (EOF or reset) within `within`, discarding
    /// anything it sends first.
    pub async fn closed_within(&mut self, within: std::time::Duration) -> bool {
        let mut chunk = [0u8; 4096];
        tokio::time::timeout(within, async {
            loop {
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    async fn read_answer(&mut self) -> Option<RawAnswer> {
        let head_end = loop {
            if let Some(pos) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            if !self.fill().await {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buffer[..head_end]).to_ascii_lowercase();
        self.buffer.drain(..head_end);
        let mut lines = head.lines();
        let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
        let head: String = lines.collect::<Vec<_>>().join("\n");
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
        };
        let body = if let Some(length) = header("content-length:") {
            let length: usize = length.parse().ok()?;
            while self.buffer.len() < length {
                if !self.fill().await {
                    return None;
                }
            }
            self.buffer.drain(..length).collect()
        } else if header("transfer-encoding:").is_some_and(|te| te.contains("chunked")) {
            let mut body = Vec::new();
            loop {
                let line_end = loop {
                    if let Some(pos) = self.buffer.windows(2).position(|w| w == b"\r\n") {
                        break pos;
                    }
                    if !self.fill().await {
                        return None;
                    }
                };
                let size = String::from_utf8_lossy(&self.buffer[..line_end]).into_owned();
                let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
                self.buffer.drain(..line_end + 2);
                while self.buffer.len() < size + 2 {
                    if !self.fill().await {
                        return None;
                    }
                }
                body.extend(self.buffer.drain(..size));
                self.buffer.drain(..2);
                if size == 0 {
                    break body;
                }
            }
        } else if (100..200).contains(&status) || status == 204 || status == 304 {
            Vec::new()
        } else {
            while self.fill().await {}
            std::mem::take(&mut self.buffer)
        };
        Some(RawAnswer { status, head, body })
    }
}

/// A deliberately naive HTTP/1.1 upstream that logs the request line of every request it
/// parses — trusting `Content-Length` over `Transfer-Encoding`, as the back ends that request
/// smuggling exploits do — and answers each `200 ok`. If a proxy in front of it ever lets one
/// client request become two here, the second shows up in [`LoggingUpstream::lines`].
pub struct LoggingUpstream {
    pub addr: SocketAddr,
    pub url: String,
    lines: Arc<std::sync::Mutex<Vec<String>>>,
    _stop: oneshot::Sender<()>,
}

impl LoggingUpstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let log = lines.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok((s, _)) => s, Err(_) => continue },
                    _ = &mut stopped => return,
                };
                tokio::spawn(serve_naively(stream, log.clone()));
            }
        });
        LoggingUpstream {
            addr,
            url: format!("http://{addr}"),
            lines,
            _stop: stop,
        }
    }

    /// Every request line received so far (and any unparsable bytes, as one line).
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lock").clone()
    }
}

async fn serve_naively(mut stream: TcpStream, log: Arc<std::sync::Mutex<Vec<String>>>) {
    let mut buffer: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let head_end = loop {
            if let Some(pos) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    if !buffer.is_empty() {
                        let rest = String::from_utf8_lossy(&buffer).into_owned();
                        log.lock().expect("lock").push(rest);
                    }
                    return;
                }
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        buffer.drain(..head_end);
        log.lock()
            .expect("lock")
            .push(head.lines().next().unwrap_or_default().to_owned());
        let lower = head.to_ascii_lowercase();
        let header = |name: &str| {
            lower
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
        };
        if let Some(length) = header("content-length:").and_then(|v| v.parse::<usize>().ok()) {
            while buffer.len() < length {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                }
            }
            buffer.drain(..length);
        } else if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
            // Up to and including the last chunk and the empty trailer.
            loop {
                if let Some(pos) = buffer.windows(5).position(|w| w == b"0\r\n\r\n") {
                    buffer.drain(..pos + 5);
                    break;
                }
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                }
            }
        }
        let answer = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";
        if stream.write_all(answer).await.is_err() {
            return;
        }
    }
}
