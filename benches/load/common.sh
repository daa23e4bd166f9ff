# Shared by run.sh and soak.sh (sourced, not run).

# A free loopback port.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# A benchmark gateway's configuration on stdout: one worker thread, no reload polling, warn
# logs, and rate limits off (nginx and HAProxy have none here, and the soak's sign-ups come from
# one address: the benchmarks measure the checks, not the limits). Extra TOML last.
gate_toml() { # listen_port admin_port upstream_url extra_toml
  cat <<TOML
[server]
listen = "127.0.0.1:$1"
admin_listen = "127.0.0.1:$2"
worker_threads = 1
config_poll_interval = "0s"
[upstream]
url = "$3"
[log]
level = "warn"
[rate_limit]
signup_per_ip = 0
signup_per_username = 0
login_per_ip = 0
login_per_username = 0
$4
TOML
}
