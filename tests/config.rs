//! The configuration loader, through its public API only.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use account_gate::config::{
    from_toml_str, load, schema_keys, Config, ConfigError, ConfigErrors, Loaded, LogFormat, Secret,
    SecretError, SecretRef,
};

const MINIMAL: &str = "[upstream]\nurl = \"http://127.0.0.1:1234\"\n";

fn ok(text: &str, env: &[(&str, &str)]) -> Loaded {
    match from_toml_str(text, env) {
        Ok(loaded) => loaded,
        Err(errors) => panic!("expected a valid config, got:\n{errors}"),
    }
}

fn errors(text: &str, env: &[(&str, &str)]) -> ConfigErrors {
    match from_toml_str(text, env) {
        Ok(loaded) => panic!("expected errors, got {:?}", loaded.config),
        Err(errors) => errors,
    }
}

fn keys(errors: &ConfigErrors) -> Vec<&str> {
    errors.errors.iter().filter_map(ConfigError::key).collect()
}

fn shipped(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(name)
}

#[test]
fn a_file_with_only_the_upstream_url_is_complete() {
    let loaded = ok(MINIMAL, &[]);
    let expected = Config::with_upstream("http://127.0.0.1:1234".parse().unwrap());
    assert_eq!(loaded.config, expected);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(loaded.config.server.listen.port(), 8080);
    assert_eq!(
        loaded.config.upstream.connect_timeout,
        Duration::from_secs(5)
    );
    assert_eq!(loaded.config.log.format, LogFormat::Text);
    assert_eq!(loaded.config.admin.token, None);
}

#[test]
fn every_mistake_is_reported_with_its_key() {
    let text = r#"
[server]
listen = "x"
bogus = 1

[upstream]
url = "http://127.0.0.1:1234"
connect_timeout = "5 parsecs"
"#;
    let errors = errors(text, &[]);
    assert_eq!(errors.errors.len(), 3, "{errors}");
    let shown = errors.to_string();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 3, "{shown}");
    assert!(lines.contains(&"server.bogus: unknown key"), "{shown}");
    assert!(
        shown.contains("server.listen: invalid socket address \"x\""),
        "{shown}"
    );
    assert!(
        shown.contains("upstream.connect_timeout: invalid duration \"5 parsecs\""),
        "{shown}"
    );
}

#[test]
fn missing_url_and_semantic_problems_are_reported_together() {
    let text = r#"
[server]
listen = "0.0.0.0:7000"
admin_listen = "127.0.0.1:7000"
max_header_bytes = 100
max_body_bytes = 0
max_connections = 0
header_read_timeout = "0s"
"#;
    let errors = errors(text, &[]);
    let mut keys = keys(&errors);
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "server.admin_listen",
            "server.header_read_timeout",
            "server.max_body_bytes",
            "server.max_connections",
            "server.max_header_bytes",
            "upstream.url",
        ],
        "{errors}"
    );
    assert!(errors
        .to_string()
        .contains("upstream.url: missing (required)"));
}

#[test]
fn upstream_url_must_be_scheme_and_host_only() {
    for url in ["ftp://h", "http://h/v2", "http://h/?a=b", "localhost:80"] {
        let text = format!("[upstream]\nurl = {url:?}\n");
        assert_eq!(keys(&errors(&text, &[])), ["upstream.url"], "{url}");
    }
}

#[test]
fn the_token_endpoint_and_stripped_headers_must_be_usable() {
    for path in [
        "v2/tokens",
        "/v2/../tokens",
        "/v2//tokens",
        "/v2/%74okens",
        "/v2/tokens;x",
        "/v2/tokens?x",
        "/v2/{member_id}",
        "*",
    ] {
        let text = format!("[upstream]\nurl = \"http://h\"\n[signup]\npath = {path:?}\n");
        assert_eq!(keys(&errors(&text, &[])), ["signup.path"], "{path}");
    }
    let text = "[upstream]\nurl = \"http://h\"\n[server]\nstrip_request_headers = [\"X-Ok\", \"bad name\"]\n";
    assert_eq!(
        keys(&errors(text, &[])),
        ["server.strip_request_headers[1]"]
    );
    let text = "[upstream]\nurl = \"http://h\"\n[server]\nstrip_request_headers = []\n";
    assert!(ok(text, &[]).config.server.strip_request_headers.is_empty());
}

#[test]
fn unknown_sections_are_errors() {
    let errors = errors(&format!("{MINIMAL}\n[tls]\ncert = \"x\"\n"), &[]);
    assert_eq!(
        errors.errors,
        [ConfigError::UnknownSection {
            key: "tls".into(),
            env_var: None
        }]
    );
    assert_eq!(errors.to_string(), "tls: unknown section");
}

#[test]
fn wrong_types_are_errors() {
    let text =
        format!("{MINIMAL}\n[server]\nmax_connections = \"many\"\n\n[log]\nformat = \"xml\"\n");
    let errors = errors(&text, &[]);
    assert_eq!(
        keys(&errors),
        ["log.format", "server.max_connections"],
        "{errors}"
    );
    assert!(errors.to_string().contains("\"many\""), "{errors}");
}

#[test]
fn environment_overrides_are_typed_by_their_key() {
    let env = [
        ("ACCOUNT_GATE__SERVER__MAX_CONNECTIONS", "12"),
        ("ACCOUNT_GATE__SERVER__SHUTDOWN_GRACE", "10s"),
        (
            "ACCOUNT_GATE__UPSTREAM__URL",
            "https://useast.api.elasticpath.com",
        ),
        ("ACCOUNT_GATE__LOG__FORMAT", "json"),
        ("ACCOUNT_GATE_CONFIG", "/not/an/override"),
        ("UNRELATED", "1"),
    ];
    let config = ok("[upstream]\nurl = \"http://file\"\n", &env).config;
    assert_eq!(config.server.max_connections, 12);
    assert_eq!(config.server.shutdown_grace, Duration::from_secs(10));
    assert_eq!(
        config.upstream.url.host(),
        Some("useast.api.elasticpath.com")
    );
    assert_eq!(config.log.format, LogFormat::Json);

    // The URL alone, from the environment, is a complete configuration.
    ok("", &[("ACCOUNT_GATE__UPSTREAM__URL", "http://127.0.0.1:1")]);
}

#[test]
fn environment_overrides_must_name_a_key() {
    let env = [
        ("ACCOUNT_GATE__SERVER__BOGUS", "1"),
        ("ACCOUNT_GATE__NOPE__LISTEN", "1"),
        ("ACCOUNT_GATE__SERVER", "1"),
        ("ACCOUNT_GATE__SERVER__MAX_BODY_BYTES", "lots"),
    ];
    let errors = errors(MINIMAL, &env);
    let shown = errors.to_string();
    assert_eq!(errors.errors.len(), 4, "{shown}");
    assert!(
        shown.contains("server.bogus: unknown key (from ACCOUNT_GATE__SERVER__BOGUS)"),
        "{shown}"
    );
    assert!(shown.contains("nope: unknown section"), "{shown}");
    assert!(shown.contains("ACCOUNT_GATE__SERVER: expected"), "{shown}");
    assert!(
        shown.contains("server.max_body_bytes: ")
            && shown.contains("(from ACCOUNT_GATE__SERVER__MAX_BODY_BYTES)"),
        "{shown}"
    );
}

#[test]
fn an_empty_override_restores_the_default() {
    let text = format!("{MINIMAL}\n[server]\nmax_connections = 5\n");
    let config = ok(&text, &[("ACCOUNT_GATE__SERVER__MAX_CONNECTIONS", "")]).config;
    assert_eq!(config.server.max_connections, 10_000);
}

#[test]
fn secret_references_resolve_from_env_and_file() {
    let env_ref = SecretRef::Env("CARGO_PKG_NAME".into());
    assert_eq!(env_ref.resolve().unwrap().expose(), "account-gate");

    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(b"s3cr3t\n").unwrap();
    let file_ref = SecretRef::File(file.path().to_owned());
    assert_eq!(file_ref.resolve().unwrap().expose(), "s3cr3t");

    let gone = SecretRef::File(file.path().with_extension("gone")).resolve();
    assert!(matches!(gone, Err(SecretError::Read { .. })), "{gone:?}");
}

#[test]
fn secret_reference_from_the_file() {
    let text = format!("{MINIMAL}\n[admin]\ntoken_env = \"ADMIN_TOKEN\"\n");
    let loaded = ok(&text, &[("ADMIN_TOKEN", "s3cr3t")]);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let token = loaded.config.admin.token.as_ref().unwrap();
    assert_eq!(*token, SecretRef::Env("ADMIN_TOKEN".into()));
    let secret = token
        .resolve_with(|name| (name == "ADMIN_TOKEN").then(|| "s3cr3t".into()))
        .unwrap();
    assert_eq!(secret.expose(), "s3cr3t");
}

#[test]
fn both_secret_references_are_an_error() {
    let text = format!("{MINIMAL}\n[admin]\ntoken_env = \"T\"\ntoken_file = \"/t\"\n");
    assert_eq!(keys(&errors(&text, &[])), ["admin"]);
}

#[test]
fn a_missing_secret_target_is_a_warning() {
    let text = format!("{MINIMAL}\n[admin]\ntoken_env = \"ADMIN_TOKEN\"\n");
    let loaded = ok(&text, &[]);
    assert_eq!(
        loaded.warnings,
        ["admin.token_env: environment variable ADMIN_TOKEN is not set"]
    );

    let text = format!("{MINIMAL}\n[admin]\ntoken_file = \"/nonexistent/admin-token\"\n");
    let loaded = ok(&text, &[]);
    assert_eq!(loaded.warnings.len(), 1);
    assert!(
        loaded.warnings[0].starts_with("admin.token_file: cannot read /nonexistent/admin-token"),
        "{:?}",
        loaded.warnings
    );
}

#[test]
fn secrets_print_redacted() {
    let secret = Secret::new("s3cr3t");
    assert_eq!(format!("{secret:?}"), "[redacted]");
    assert_eq!(format!("{secret}"), "[redacted]");
}

#[test]
fn ca_file_must_be_readable() {
    let text = "[upstream]\nurl = \"https://h\"\nca_file = \"/nonexistent/ca.pem\"\n";
    assert_eq!(keys(&errors(text, &[])), ["upstream.ca_file"]);

    let ca = tempfile::NamedTempFile::new().unwrap();
    let text = format!(
        "[upstream]\nurl = \"https://h\"\nca_file = {:?}\n",
        ca.path().display().to_string()
    );
    assert_eq!(
        ok(&text, &[]).config.upstream.ca_file.as_deref(),
        Some(ca.path())
    );
}

#[test]
fn redacted_toml_round_trips_without_the_secret() {
    let text = r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
header_read_timeout = "250ms"
shutdown_delay = "0s"

[upstream]
url = "https://useast.api.elasticpath.com"
pool_idle_timeout = "1m 30s"

[log]
level = "info,account_gate=debug"
format = "json"

[admin]
token_env = "ADMIN_TOKEN"
"#;
    let env = [("ADMIN_TOKEN", "s3cr3t-value")];
    let config = ok(text, &env).config;
    let rendered = config.to_redacted_toml();
    assert!(!rendered.contains("s3cr3t"), "{rendered}");
    assert!(
        rendered.contains("token_env = \"ADMIN_TOKEN\""),
        "{rendered}"
    );
    assert!(rendered.contains("# token_file is not set"), "{rendered}");
    for key in schema_keys() {
        let (_, key) = key.rsplit_once('.').unwrap();
        assert!(rendered.contains(key), "{key} missing from\n{rendered}");
    }
    assert_eq!(ok(&rendered, &env).config, config, "{rendered}");

    let defaults = Config::with_upstream("http://127.0.0.1:1234".parse().unwrap());
    assert_eq!(ok(&defaults.to_redacted_toml(), &[]).config, defaults);
}

#[test]
fn syntax_errors_have_a_line_and_column() {
    let text = "[upstream]\nurl = \"http://h\"\nconnect_timeout = \n";
    let errors = errors(text, &[]);
    match errors.errors.as_slice() {
        [ConfigError::Syntax { line, column, .. }] => assert_eq!((*line, *column), (3, 19)),
        other => panic!("expected one syntax error, got {other:?}"),
    }
    assert!(
        errors.to_string().starts_with("line 3, column 19: "),
        "{errors}"
    );
}

#[test]
fn load_reports_an_unreadable_file() {
    let errors = load(Path::new("/nonexistent/account-gate.toml")).unwrap_err();
    assert!(matches!(
        errors.errors.as_slice(),
        [ConfigError::Read { .. }]
    ));
}

#[test]
fn shipped_configs_are_valid() {
    let production = load(&shipped("account-gate.toml")).unwrap_or_else(|e| panic!("{e}"));
    // The shipped file documents the defaults, so it must equal them.
    let url = "https://useast.api.elasticpath.com".parse().unwrap();
    assert_eq!(production.config, Config::with_upstream(url));

    let demo = load(&shipped("demo.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(demo.config.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(
        demo.config.server.admin_listen.to_string(),
        "127.0.0.1:9090"
    );
    assert_eq!(
        demo.config.upstream.url.to_string(),
        "http://127.0.0.1:8081/"
    );
    assert_eq!(demo.config.log.level, "info");
}

#[test]
fn shipped_config_mentions_every_key() {
    let text = std::fs::read_to_string(shipped("account-gate.toml")).unwrap();
    let mut section = String::new();
    let mut mentioned = Vec::new();
    for line in text.lines() {
        // Commented-out examples count: optional keys are shown that way.
        let line = line.trim().trim_start_matches(['#', ' ']);
        if let Some(name) = line
            .trim_start_matches('[')
            .strip_suffix(']')
            .filter(|_| line.starts_with('['))
        {
            section = name.trim_end_matches(']').to_owned();
        } else if let Some((key, _)) = line.split_once(" = ") {
            if !section.is_empty() {
                mentioned.push(format!("{section}.{key}"));
            }
        }
    }
    for key in schema_keys() {
        assert!(
            mentioned.contains(&key),
            "account-gate.toml does not mention {key}"
        );
    }
}

#[test]
fn nested_tables_and_route_arrays_report_every_problem() {
    let text = r#"
[upstream]
url = "http://127.0.0.1:1234"

[tokens]
mode = "signature"

[tokens.signature]
algorithms = ["HS256", "none"]
jwks_url = "ftp://keys"
bogus = 1

[[routes]]
path = "/v2/{nope}"
token = "off"

[[routes]]
path = "/v2/accounts/{account_id}/public"
token = "sometimes"
"#;
    let errors = errors(text, &[]).to_string();
    for expected in [
        "tokens.signature.algorithms",
        "tokens.signature.jwks_url",
        "tokens.signature.bogus: unknown key",
        "routes[0].path",
        "routes[1].token",
    ] {
        assert!(
            errors.contains(expected),
            "{expected} missing from:\n{errors}"
        );
    }
}

#[test]
fn nested_keys_take_environment_overrides_and_routes_round_trip() {
    let text = r#"
[upstream]
url = "http://127.0.0.1:1234"

[[routes]]
path = "/v2/accounts/{account_id}/public"
token = "off"
"#;
    let env = [
        (
            "ACCOUNT_GATE__TOKENS__SIGNATURE__JWKS_URL",
            "http://127.0.0.1:9/jwks",
        ),
        ("ACCOUNT_GATE__TOKENS__SIGNATURE__JWKS_ALLOW_HTTP", "true"),
        ("ACCOUNT_GATE__TOKENS__MODE", "either"),
    ];
    let config = ok(text, &env).config;
    assert_eq!(
        config.tokens.signature.jwks_url.as_deref(),
        Some("http://127.0.0.1:9/jwks")
    );
    assert_eq!(config.routes.len(), 1);
    let rendered = config.to_redacted_toml();
    assert!(rendered.contains("[tokens.signature]") && rendered.contains("[[routes]]"));
    assert_eq!(ok(&rendered, &[]).config, config, "{rendered}");
    let unknown = errors(text, &[("ACCOUNT_GATE__TOKENS__SIGNATURE__NOPE", "1")]).to_string();
    assert!(unknown.contains("tokens.signature.nope"), "{unknown}");
}

#[test]
fn connection_limits_take_defaults_overrides_and_range_checks_like_other_keys() {
    let defaults = ok(MINIMAL, &[]).config;
    assert_eq!(defaults.server.body_read_timeout, Duration::from_secs(10));
    assert_eq!(defaults.server.idle_timeout, Duration::from_secs(60));
    assert_eq!(defaults.server.http2.max_concurrent_streams, 100);
    assert_eq!(defaults.upstream.max_connections, 256);
    assert_eq!(defaults.upstream.body_timeout, Duration::from_secs(30));

    // [server.http2] is a table nested in [server]: set in the file, or by a variable naming
    // both levels.
    let text = format!("{MINIMAL}[server.http2]\nmax_concurrent_streams = 20\n");
    let env = [
        ("ACCOUNT_GATE__SERVER__HTTP2__KEEP_ALIVE_TIMEOUT", "3s"),
        ("ACCOUNT_GATE__SERVER__IDLE_TIMEOUT", "15s"),
    ];
    let loaded = ok(&text, &env).config;
    assert_eq!(loaded.server.http2.max_concurrent_streams, 20);
    assert_eq!(
        loaded.server.http2.keep_alive_timeout,
        Duration::from_secs(3)
    );
    assert_eq!(loaded.server.idle_timeout, Duration::from_secs(15));

    let text = format!(
        "{MINIMAL}max_connections = 0\nbody_timeout = \"0s\"\n\
         [server]\nbody_read_timeout = \"0s\"\n\
         [server.http2]\nmax_concurrent_streams = 0\ninitial_stream_window_size = 4294967295\nbogus = 1\n"
    );
    let errors = errors(&text, &[("ACCOUNT_GATE__SERVER__HTTP2__NOPE", "1")]);
    let mut keys = keys(&errors);
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "server.body_read_timeout",
            "server.http2.bogus",
            "server.http2.initial_stream_window_size",
            "server.http2.max_concurrent_streams",
            "server.http2.nope",
            "upstream.body_timeout",
            "upstream.max_connections",
        ],
        "{errors}"
    );
}

#[test]
fn a_jwks_url_must_be_https_unless_plain_http_is_allowed() {
    let with = |url: &str| {
        format!(
            "{MINIMAL}[tokens]\nmode = \"signature\"\n[tokens.signature]\njwks_url = \"{url}\"\n"
        )
    };
    let plain = errors(&with("http://keys.internal/jwks"), &[]);
    assert_eq!(keys(&plain), ["tokens.signature.jwks_url"]);
    assert!(plain.to_string().contains("jwks_allow_http"), "{plain}");
    ok(
        &format!(
            "{}jwks_allow_http = true\n",
            with("http://127.0.0.1:8080/jwks")
        ),
        &[],
    );
    ok(&with("https://keys.example/jwks"), &[]);
    let other = errors(&with("ftp://keys"), &[]);
    assert!(other.to_string().contains("not an https:// URL"), "{other}");
}

#[test]
fn an_hs256_secret_may_be_base64_for_a_key_of_raw_bytes() {
    let with = |encoding: &str| {
        format!(
            "{MINIMAL}[tokens]\nmode = \"signature\"\n[tokens.signature]\n\
             hs256_secret_env = \"K\"\nhs256_secret_encoding = \"{encoding}\"\n"
        )
    };
    ok(&with("base64"), &[("K", "AAEC/w==")]);
    ok(&with("base64"), &[("K", " AAEC/w\n")]);
    let refused = errors(&with("base64"), &[("K", "not base64!")]);
    assert_eq!(keys(&refused), ["tokens.signature.hs256_secret_env"]);
    assert!(
        !refused.to_string().contains("not base64!"),
        "the value is never shown"
    );
    ok(&with("text"), &[("K", "not base64!")]);
    errors(&with("hex"), &[("K", "00")]);
}

#[test]
fn listener_tls_needs_a_usable_certificate_and_key() {
    let dir = tempfile::tempdir().expect("dir");
    let missing = format!(
        "{MINIMAL}[server.tls]\ncert_file = \"{0}/nope.crt\"\nkey_file = \"{0}/nope.key\"\n",
        dir.path().display()
    );
    // Not there (yet): a mounted Secret's business, a warning like a missing secret.
    let loaded = ok(&missing, &[]);
    assert!(
        loaded.warnings.iter().any(|w| w.contains("nope.crt")),
        "{:?}",
        loaded.warnings
    );
    // There but not a certificate: invalid.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").expect("write");
    let unusable = format!(
        "{MINIMAL}[server.tls]\ncert_file = \"{0}\"\nkey_file = \"{0}\"\n",
        junk.display()
    );
    let errors = errors(&unusable, &[]);
    assert_eq!(keys(&errors), ["server.tls"]);
    let half = format!("{MINIMAL}[server.tls]\ncert_file = \"/x.crt\"\n");
    assert!(errors_of_text(&half).contains("cert_file and key_file are both required"));
}

fn errors_of_text(text: &str) -> String {
    errors(text, &[]).to_string()
}

#[test]
fn the_authz_listener_is_off_by_default_and_checked_when_set() {
    let loaded = ok("[upstream]\nurl = \"http://127.0.0.1:1\"\n", &[]);
    assert_eq!(loaded.config.authz.listen, None);
    assert_eq!(loaded.config.authz.path_prefix, "");
    let rendered = loaded.config.to_redacted_toml();
    assert!(rendered.contains("\n[authz]\n# listen is not set\npath_prefix = \"\"\n"));

    let loaded = ok(
        "[upstream]\nurl = \"http://127.0.0.1:1\"\n",
        &[
            ("ACCOUNT_GATE__AUTHZ__LISTEN", "127.0.0.1:8081"),
            ("ACCOUNT_GATE__AUTHZ__PATH_PREFIX", "/ext-authz"),
            ("ACCOUNT_GATE__AUTHZ__TARGET_FROM", "path"),
        ],
    );
    assert_eq!(
        loaded.config.authz.target_from,
        account_gate::config::TargetFrom::Path
    );
    assert_eq!(
        loaded.config.authz.listen,
        Some("127.0.0.1:8081".parse().unwrap())
    );
    assert_eq!(loaded.config.authz.path_prefix, "/ext-authz");
    let round_trip = ok(&loaded.config.to_redacted_toml(), &[]);
    assert_eq!(round_trip.config, loaded.config);

    let text = "[upstream]\nurl = \"http://127.0.0.1:1\"\n\
                [server]\nlisten = \"0.0.0.0:8080\"\nadmin_listen = \"0.0.0.0:9090\"\n\
                [authz]\nlisten = \"127.0.0.1:9090\"\npath_prefix = \"/authz/\"\n";
    let errors = errors(text, &[]);
    assert_eq!(keys(&errors), ["authz.listen", "authz.path_prefix"]);
    let text = errors.to_string();
    assert!(text.contains("collides with server.admin_listen"), "{text}");
    for prefix in ["authz", "/a/../b", "/a//b", "/a?x", "/a;b", "/%2e"] {
        let errors = errors_of_text(&format!(
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n[authz]\npath_prefix = {prefix:?}\n"
        ));
        assert!(errors.contains("authz.path_prefix"), "{prefix}: {errors}");
    }
    let errors =
        errors_of_text("[upstream]\nurl = \"http://127.0.0.1:1\"\n[authz]\nlisten = \"x\"\n");
    assert!(
        errors.contains("authz.listen: invalid socket address \"x\""),
        "{errors}"
    );
}

#[test]
fn the_standard_opentelemetry_variables_set_the_tracing_keys() {
    use account_gate::config::{Ratio, TraceExporter, TraceSampler};

    let text = format!(
        "{MINIMAL}\n[tracing]\nendpoint = \"http://file-collector:4318\"\nservice_name = \"from-file\"\n"
    );
    // The file alone: tracing on, toward the file's collector.
    let config = ok(&text, &[]).config;
    assert_eq!(
        config.tracing.export_url().as_deref(),
        Some("http://file-collector:4318/v1/traces")
    );
    assert_eq!(config.tracing.service_name, "from-file");

    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
        ("OTEL_SERVICE_NAME", "checkout-gateway"),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod"),
        ("OTEL_TRACES_SAMPLER", "ParentBased_TraceIdRatio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "4096"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "256"),
        ("OTEL_BSP_EXPORT_TIMEOUT", "5000"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "3000"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
    ];
    let tracing = ok(&text, &env).config.tracing;
    assert_eq!(
        tracing.export_url().as_deref(),
        Some("http://collector:4318/v1/traces")
    );
    assert_eq!(tracing.service_name, "checkout-gateway");
    assert_eq!(tracing.resource_attributes, "deployment.environment=prod");
    assert_eq!(tracing.sampler, TraceSampler::ParentbasedTraceidratio);
    assert_eq!(tracing.sampler_arg, Ratio(0.25));
    assert_eq!(tracing.batch.schedule_delay, Duration::from_millis(200));
    assert_eq!(tracing.batch.max_queue_size, 4096);
    assert_eq!(tracing.batch.max_export_batch_size, 256);
    assert_eq!(tracing.batch.export_timeout, Duration::from_secs(5));
    assert_eq!(tracing.timeout, Duration::from_secs(3));

    // The signal's own variables win over the general ones; the URL is then used as it is.
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "https://traces.example/ingest",
        ),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "3000"),
        ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1500"),
    ];
    let tracing = ok(MINIMAL, &env).config.tracing;
    assert_eq!(
        tracing.export_url().as_deref(),
        Some("https://traces.example/ingest")
    );
    assert_eq!(tracing.timeout, Duration::from_millis(1500));

    // Off unless an endpoint is set, and off again when the SDK is disabled or the exporter is
    // `none`, whatever else is set.
    assert_eq!(ok(MINIMAL, &[]).config.tracing.export_url(), None);
    for off in [
        ("OTEL_SDK_DISABLED", "TRUE"),
        ("OTEL_TRACES_EXPORTER", "none"),
    ] {
        let tracing = ok(&text, &[off]).config.tracing;
        assert_eq!(tracing.exporter, TraceExporter::None, "{off:?}");
        assert_eq!(tracing.export_url(), None, "{off:?}");
    }
    // Empty variables are unset ones.
    let tracing = ok(&text, &[("OTEL_SERVICE_NAME", "")]).config.tracing;
    assert_eq!(tracing.service_name, "from-file");
    // And what they set is shown, and loads back the same.
    let config = ok(&text, &[("OTEL_TRACES_SAMPLER_ARG", "0.5")]).config;
    let rendered = config.to_redacted_toml();
    assert!(rendered.contains("[tracing.batch]"), "{rendered}");
    assert_eq!(ok(&rendered, &[]).config, config);
}

#[test]
fn bad_opentelemetry_settings_are_errors_naming_their_variable() {
    let env = [
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ("OTEL_BSP_SCHEDULE_DELAY", "soon"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
        ("OTEL_RESOURCE_ATTRIBUTES", "novalue"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "10"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "20"),
        ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip"),
    ];
    let refused = errors(MINIMAL, &env);
    let shown = refused.to_string();
    for key in [
        "tracing.sampler",
        "tracing.sampler_arg",
        "tracing.batch.schedule_delay",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        "tracing.endpoint",
        "tracing.resource_attributes",
        "tracing.batch.max_export_batch_size",
    ] {
        assert!(keys(&refused).contains(&key), "{key} in\n{shown}");
    }
    assert!(shown.contains("(from OTEL_TRACES_SAMPLER)"), "{shown}");
    assert!(shown.contains("http/protobuf"), "{shown}");

    // The same key from an override and a standard variable is ambiguous.
    let both = errors(
        MINIMAL,
        &[
            ("ACCOUNT_GATE__TRACING__ENDPOINT", "http://a:4318"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://b:4318"),
        ],
    );
    assert!(both.to_string().contains("also set by"), "{both}");
}
