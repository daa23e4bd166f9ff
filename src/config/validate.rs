//! Checks that need more than a value's type: ranges, the shape of the upstream URL, listeners
//! that would collide, files that must exist. Every check runs and reports; the internal
//! [`Config`] is built only when none failed.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;

use super::error::Report;
use super::file::FileConfig;
use super::{AdminConfig, Config, SecretRef};

/// The longest duration accepted anywhere: far beyond any sensible timeout, and short enough that
/// `Instant::now() + d` can never overflow.
pub(super) const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// A configuration that passed validation, with what validation built to check it.
pub(super) struct Validated {
    pub(super) config: Config,
    /// The data listener's TLS settings, built from `[server.tls]`'s files; `None` without
    /// `[server.tls]` or when one of its files cannot be read (a warning).
    pub(super) listener_tls: Option<Arc<rustls::ServerConfig>>,
}

/// Checks `file`, records problems and warnings in `report`, and returns the configuration if
/// there were no problems. `lookup` reads environment variables for the secret-reference warning.
pub(super) fn validate(
    file: FileConfig,
    lookup: &dyn Fn(&str) -> Option<OsString>,
    report: &mut Report,
) -> Option<Validated> {
    let (s, u) = (&file.server, &file.upstream);

    // hyper panics on a header buffer under 8 KiB; the others would refuse every request.
    for (key, value, min) in [
        ("server.max_header_bytes", s.max_header_bytes, 8192),
        ("server.max_body_bytes", s.max_body_bytes, 1),
        ("server.max_connections", s.max_connections, 1),
        ("upstream.max_connections", u.max_connections, 1),
        (
            "server.http2.max_concurrent_streams",
            s.http2.max_concurrent_streams as usize,
            1,
        ),
        // RFC 9113 sets no floor on a stream window, but one smaller than a frame stalls every
        // body; the connection window cannot be lowered below 65 535 (§6.9.2).
        (
            "server.http2.initial_stream_window_size",
            s.http2.initial_stream_window_size as usize,
            16 * 1024,
        ),
        (
            "server.http2.initial_connection_window_size",
            s.http2.initial_connection_window_size as usize,
            65_535,
        ),
        (
            "server.http2.max_send_buf_size",
            s.http2.max_send_buf_size,
            1024,
        ),
    ] {
        if value < min {
            report.invalid(key, format!("must be at least {min}, got {value}"));
        }
    }
    for (i, name) in s.strip_request_headers.iter().enumerate() {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            report.invalid(
                &format!("server.strip_request_headers[{i}]"),
                format!("{name:?} is not a valid header name"),
            );
        }
    }
    // The largest window HTTP/2 can express (RFC 9113 §6.9.1); hyper panics beyond u32.
    for (key, value, max) in [
        (
            "server.http2.initial_stream_window_size",
            s.http2.initial_stream_window_size as usize,
            (1 << 31) - 1,
        ),
        (
            "server.http2.initial_connection_window_size",
            s.http2.initial_connection_window_size as usize,
            (1 << 31) - 1,
        ),
        (
            "server.http2.max_send_buf_size",
            s.http2.max_send_buf_size,
            16 << 20,
        ),
    ] {
        if value > max {
            report.invalid(key, format!("must be at most {max}, got {value}"));
        }
    }
    if s.worker_threads > 1024 {
        report.invalid(
            "server.worker_threads",
            format!("must be at most 1024, got {}", s.worker_threads),
        );
    }

    // The shutdown phases may be zero (tests and demos stop at once); a zero timeout would fail
    // every connection.
    for (key, value, may_be_zero) in [
        ("server.header_read_timeout", s.header_read_timeout, false),
        ("server.body_read_timeout", s.body_read_timeout, false),
        ("server.idle_timeout", s.idle_timeout, false),
        (
            "server.http2.keep_alive_interval",
            s.http2.keep_alive_interval,
            false,
        ),
        (
            "server.http2.keep_alive_timeout",
            s.http2.keep_alive_timeout,
            false,
        ),
        ("server.shutdown_delay", s.shutdown_delay, true),
        ("server.shutdown_grace", s.shutdown_grace, true),
        ("server.config_poll_interval", s.config_poll_interval, true),
        ("upstream.connect_timeout", u.connect_timeout, false),
        ("upstream.response_timeout", u.response_timeout, false),
        ("upstream.pool_idle_timeout", u.pool_idle_timeout, false),
        ("upstream.body_timeout", u.body_timeout, false),
    ] {
        if value.is_zero() && !may_be_zero {
            report.invalid(key, "must be greater than 0");
        } else if value > MAX_DURATION {
            report.invalid(key, "must be at most 24h");
        }
    }

    if report.is_ok("server.listen")
        && report.is_ok("server.admin_listen")
        && listeners_collide(s.listen, s.admin_listen)
    {
        report.invalid(
            "server.admin_listen",
            format!(
                "\"{}\" collides with server.listen \"{}\"; the admin listener needs its own port",
                s.admin_listen, s.listen
            ),
        );
    }

    check_authz(&file, report);

    let url = match &u.url {
        None => {
            if report.is_ok("upstream.url") {
                report.missing("upstream.url");
            }
            None
        }
        Some(raw) => parse_upstream_url(raw)
            .map_err(|reason| report.invalid("upstream.url", reason))
            .ok(),
    };

    let mut listener_tls = None;
    if let Some(tls) = &s.tls {
        // Built here, so that `check-config` and a reload catch a bad PEM too; what is built is
        // what the listener then serves (`Loaded::listener_tls`), not a second reading of files
        // that may have changed in between.
        // A file not there (yet) is a mounted Secret's business, like a missing secret: a
        // warning for `check-config`, and at start or reload an error that keeps the gateway
        // (or the old certificate) from using it. A file there but unusable is invalid.
        let files = [
            Some(&tls.cert_file),
            Some(&tls.key_file),
            tls.client_ca_file.as_ref(),
        ];
        let missing = files
            .into_iter()
            .flatten()
            .find(|path| readable_file(path).is_err());
        if tls.cert_file.as_os_str().is_empty() || tls.key_file.as_os_str().is_empty() {
            report.invalid("server.tls", "cert_file and key_file are both required");
        } else if let Some(path) = missing {
            report.warn(
                "server.tls",
                format!(
                    "{} cannot be read; the gateway will not start without it",
                    path.display()
                ),
            );
        } else {
            match crate::tls::server_config(tls) {
                Ok(built) => listener_tls = Some(Arc::new(built)),
                Err(error) => report.invalid("server.tls", error.to_string()),
            }
        }
    }

    if let Some(ca_file) = &u.ca_file {
        if let Err(reason) = readable_file(ca_file) {
            report.invalid("upstream.ca_file", reason);
        } else if url.as_ref().is_some_and(|u| u.scheme_str() == Some("http")) {
            report.warn("upstream.ca_file", "ignored: upstream.url is plain http");
        }
    }

    if file.log.level.trim().is_empty() {
        report.invalid("log.level", "must not be empty");
    } else if let Err(e) = tracing_subscriber::EnvFilter::try_new(&file.log.level) {
        report.invalid(
            "log.level",
            format!("invalid filter {:?}: {e}", file.log.level),
        );
    }

    validate_token_path(&file, report);
    validate_tokens(&file, lookup, report);
    super::store::validate_store(&file.store, lookup, report);
    super::tracing::validate(&file.tracing, report);

    let admin = admin_config(&file, report);
    if let Some(token) = &admin.token {
        // The admin API is optional until it is used; `run` refuses to start it without a token.
        if let Err(e) = token.resolve_with(lookup) {
            report.warn(token.admin_key(), e);
        }
    }

    Some(Validated {
        config: file.into_config(url?, admin),
        listener_tls,
    })
}

/// `[signup]`, `[rate_limit]`, `[store]` and `[tokens]`.
fn validate_token_path(file: &FileConfig, report: &mut Report) {
    let signup = &file.signup;
    // The token endpoint is matched on canonical targets, so it must be one itself.
    let canonical = signup
        .path
        .parse::<http::Uri>()
        .ok()
        .filter(|uri| uri.query().is_none() && uri.path() == signup.path)
        .and_then(|uri| crate::target::CanonicalTarget::parse(&uri).ok())
        .filter(|target| !target.rewritten() && target.path() != "*");
    if canonical.is_none() || signup.path.contains(['{', '}']) {
        report.invalid(
            "signup.path",
            format!(
                "must be a path starting with '/', without dot or empty segments, `;` or \
                 percent-encoding, got {:?}",
                signup.path
            ),
        );
    }
    if signup.mechanisms.is_empty() {
        report.invalid("signup.mechanisms", "must name at least one mechanism");
    }
    if signup.max_response_bytes < 1024 {
        report.invalid(
            "signup.max_response_bytes",
            format!("must be at least 1024, got {}", signup.max_response_bytes),
        );
    }
    // pingora-limits' estimator assumes windows of a second or more.
    let window = file.rate_limit.window;
    if window < Duration::from_secs(1) || window > MAX_DURATION {
        report.invalid("rate_limit.window", "must be between 1s and 24h");
    }
    if http::HeaderName::from_bytes(file.tokens.header.as_bytes()).is_err() {
        report.invalid(
            "tokens.header",
            format!("{:?} is not a valid header name", file.tokens.header),
        );
    }
}

/// `[tokens]`, `[tokens.signature]` and `[[routes]]`.
fn validate_tokens(
    file: &FileConfig,
    lookup: &dyn Fn(&str) -> Option<OsString>,
    report: &mut Report,
) {
    let tokens = &file.tokens;
    for (key, name, may_be_empty) in [
        ("tokens.account_id_header", &tokens.account_id_header, true),
        ("tokens.member_id_header", &tokens.member_id_header, true),
    ] {
        if !(may_be_empty && name.is_empty())
            && http::HeaderName::from_bytes(name.as_bytes()).is_err()
        {
            report.invalid(key, format!("{name:?} is not a valid header name"));
        }
    }
    for (key, value, may_be_zero) in [
        ("tokens.leeway", tokens.leeway, true),
        ("tokens.negative_ttl", tokens.negative_ttl, false),
        ("tokens.learned_ttl", tokens.learned_ttl, false),
        (
            "tokens.signature.jwks_refresh",
            tokens.signature.jwks_refresh,
            false,
        ),
        (
            "tokens.signature.jwks_cooldown",
            tokens.signature.jwks_cooldown,
            true,
        ),
        (
            "tokens.signature.jwks_timeout",
            tokens.signature.jwks_timeout,
            false,
        ),
    ] {
        if value.is_zero() && !may_be_zero {
            report.invalid(key, "must be greater than 0");
        } else if value > MAX_DURATION {
            report.invalid(key, "must be at most 24h");
        }
    }
    for (key, value) in [
        ("tokens.negative_max_entries", tokens.negative_max_entries),
        ("tokens.cache_max_entries", tokens.cache_max_entries),
    ] {
        if value == 0 {
            report.invalid(key, "must be at least 1");
        }
    }

    let signature = &tokens.signature;
    for name in &signature.algorithms {
        if name.eq_ignore_ascii_case("none") {
            report.invalid("tokens.signature.algorithms", "\"none\" is never accepted");
        } else if name.parse::<jsonwebtoken::Algorithm>().is_err() {
            report.invalid(
                "tokens.signature.algorithms",
                format!("unknown algorithm {name:?} (HS256, RS256, ES256, EdDSA, …)"),
            );
        }
    }
    if signature.hs256_secret_env.is_some() && signature.hs256_secret_file.is_some() {
        report.invalid(
            "tokens.signature",
            "hs256_secret_env and hs256_secret_file are both set; set one of them",
        );
    } else if let Some(secret) = signature.hs256_secret() {
        let key = match secret {
            SecretRef::Env(_) => "tokens.signature.hs256_secret_env",
            SecretRef::File(_) => "tokens.signature.hs256_secret_file",
        };
        match secret.resolve_with(lookup) {
            Err(e) => report.warn(key, e),
            Ok(value) => {
                let encoding = signature.hs256_secret_encoding;
                if encoding.decode(value.expose()).is_none() {
                    report.invalid(
                        key,
                        "the secret is not base64, as tokens.signature.hs256_secret_encoding says",
                    );
                }
            }
        }
    }
    for (key, path) in [
        (
            "tokens.signature.public_key_file",
            &signature.public_key_file,
        ),
        ("tokens.signature.jwks_ca_file", &signature.jwks_ca_file),
    ] {
        if let Some(path) = path {
            if let Err(reason) = readable_file(path) {
                report.invalid(key, reason);
            }
        }
    }
    if let Some(url) = &signature.jwks_url {
        let parsed = url.parse::<Uri>().ok().filter(|u| u.host().is_some());
        match parsed.as_ref().and_then(Uri::scheme_str) {
            Some("https") => {}
            Some("http") if signature.jwks_allow_http => {}
            Some("http") => report.invalid(
                "tokens.signature.jwks_url",
                format!(
                    "{url:?} is plain http: keys fetched in clear can be replaced on the way; use \
                     https://, or set tokens.signature.jwks_allow_http = true for a JWKS served on \
                     this host or pod"
                ),
            ),
            _ => report.invalid(
                "tokens.signature.jwks_url",
                format!("{url:?} is not an https:// URL"),
            ),
        }
    }
    if tokens.mode.checks_signatures() {
        if signature.algorithms.is_empty() {
            report.invalid(
                "tokens.signature.algorithms",
                "must name at least one algorithm",
            );
        }
        if signature.hs256_secret().is_none()
            && signature.public_key_file.is_none()
            && signature.jwks_url.is_none()
        {
            report.invalid(
                "tokens.signature",
                "tokens.mode checks signatures but no key is configured (hs256_secret_env, \
                 hs256_secret_file, public_key_file or jwks_url)",
            );
        }
    }

    for (index, route) in file.routes.iter().enumerate() {
        if let Err(e) = crate::scope::Rule::new(&route.path, route.token) {
            report.invalid(
                &format!("routes[{index}].path"),
                format!("{:?}: {e}", route.path),
            );
        }
    }
}

/// The admin token reference, checking that at most one of `token_env`/`token_file` is set.
fn admin_config(file: &FileConfig, report: &mut Report) -> AdminConfig {
    let token = match (&file.admin.token_env, &file.admin.token_file) {
        (None, None) => None,
        (Some(_), Some(_)) => {
            report.invalid(
                "admin",
                "token_env and token_file are both set; set one of them",
            );
            None
        }
        (Some(name), None) => {
            if name.is_empty() || name.contains(['=', '\0']) {
                report.invalid(
                    "admin.token_env",
                    format!("{name:?} is not an environment variable name"),
                );
                None
            } else {
                Some(SecretRef::Env(name.clone()))
            }
        }
        (None, Some(path)) => {
            if path.as_os_str().is_empty() {
                report.invalid("admin.token_file", "must not be empty");
                None
            } else {
                Some(SecretRef::File(path.clone()))
            }
        }
    };
    AdminConfig { token }
}

/// The upstream as `scheme://authority`, which requests are forwarded to with their own path.
fn parse_upstream_url(raw: &str) -> Result<Uri, String> {
    // Checked first and without echoing the value, which would print the password.
    if raw.contains('@') {
        return Err("must not contain credentials (user:password@)".to_owned());
    }
    let uri: Uri = raw
        .parse()
        .map_err(|e| format!("invalid URL {raw:?}: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => return Err(format!("scheme must be http or https, not {other:?}")),
        None => {
            return Err(format!(
            "{raw:?} is not an absolute URL (expected e.g. \"https://useast.api.elasticpath.com\")"
        ))
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{raw:?} has no host"));
    }
    if !matches!(uri.path(), "" | "/") {
        return Err(format!(
            "must not have a path (found {:?}): requests keep their own path",
            uri.path()
        ));
    }
    // `Uri` silently drops a fragment, so look at the text too.
    if uri.query().is_some() || raw.contains('#') {
        return Err(format!("{raw:?} must not have a query or fragment"));
    }
    Ok(uri)
}

/// `[authz]`: its listener needs its own port, and `path_prefix` must be a path in canonical
/// form that a call's path can start with.
fn check_authz(file: &FileConfig, report: &mut Report) {
    let (s, authz) = (&file.server, &file.authz);
    if let Some(listen) = authz.listen {
        if report.is_ok("authz.listen") {
            for (key, other) in [
                ("server.listen", s.listen),
                ("server.admin_listen", s.admin_listen),
            ] {
                if listeners_collide(listen, other) {
                    report.invalid(
                        "authz.listen",
                        format!(
                            "\"{listen}\" collides with {key} \"{other}\"; the authz listener needs its own port"
                        ),
                    );
                }
            }
        }
    }
    let prefix = &authz.path_prefix;
    if !prefix.is_empty() {
        let canonical = prefix
            .parse::<Uri>()
            .ok()
            .filter(|uri| uri.scheme().is_none() && uri.query().is_none())
            .and_then(|uri| crate::target::CanonicalTarget::parse(&uri).ok())
            .is_some_and(|target| !target.rewritten() && target.path() == prefix.as_str());
        if !canonical || !prefix.starts_with('/') || prefix.ends_with('/') {
            report.invalid(
                "authz.path_prefix",
                format!(
                    "{prefix:?} must be empty or a path in normal form, starting and not ending with \"/\" (e.g. \"/authz\")"
                ),
            );
        }
    }
}

/// Two listeners collide when one would fail to bind while the other is bound. Port 0 (an
/// ephemeral port, as tests use) never collides.
fn listeners_collide(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

pub(super) fn readable_file(path: &Path) -> Result<(), String> {
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    match file.metadata() {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(format!("{shown} is not a regular file")),
        Err(e) => Err(format!("cannot read {shown}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_url_is_scheme_and_authority_only() {
        for ok in [
            "https://useast.api.elasticpath.com",
            "https://useast.api.elasticpath.com/",
            "http://127.0.0.1:8081",
        ] {
            assert!(parse_upstream_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ftp://h",
            "h:80",
            "/v2",
            "http://h/v2",
            "http://h/?q=1",
            "http://h/#f",
            "http://u:p@h",
            "http://:80",
            "not a url",
        ] {
            assert!(parse_upstream_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_are_not_echoed() {
        let err = parse_upstream_url("https://me:hunter2@h").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn listener_collisions() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(listeners_collide(addr("0.0.0.0:80"), addr("127.0.0.1:80")));
        assert!(listeners_collide(addr("[::]:80"), addr("127.0.0.1:80")));
        assert!(listeners_collide(addr("10.0.0.1:80"), addr("10.0.0.1:80")));
        assert!(!listeners_collide(addr("10.0.0.1:80"), addr("10.0.0.2:80")));
        assert!(!listeners_collide(addr("127.0.0.1:0"), addr("127.0.0.1:0")));
        assert!(!listeners_collide(addr("0.0.0.0:80"), addr("0.0.0.0:81")));
    }
}
