# Shared by run.sh and soak.sh (sourced, not run).

# Installs with apt-get whichever of the tools named is missing, when it can.
install_missing() { # tool...
  local missing=() packages tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  [ "${#missing[@]}" -gt 0 ] || return 0
  echo "installing: ${missing[*]}"
  packages=("${missing[@]/taskset/util-linux}")
  apt-get update -qq >/dev/null 2>&1 || true
  apt-get install -y -qq "${packages[@]/perf/linux-perf}" >/dev/null 2>&1 || true
}

# Stops the script unless every tool named is there.
require() { # tool...
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || { echo "needs $tool, which could not be installed"; exit 1; }
  done
}

# Builds the gateway in PROFILE and the examples named. The gateway gets a `cargo build` of its
# own: built in one command with the examples, it would carry the features their
# dev-dependencies turn on (about 390 KiB more code), and the binary measured would not be the
# one users run.
build_for_bench() { # profile example...
  local profile=$1 example args=()
  shift
  cargo build --profile "$profile" --quiet --bin account-gate
  for example in "$@"; do args+=(--example "$example"); done
  [ "${#args[@]}" = 0 ] || cargo build --profile "$profile" --quiet "${args[@]}"
}

# A free loopback port.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# A benchmark gateway's configuration on stdout: the default runtime (pinned to one core, that
# is one worker thread), no reload polling, logs at $GATE_LOG_LEVEL (`warn`, no access lines,
# unless set; the default configuration is `info`), and rate limits off (nginx and HAProxy have
# none here, and the soak's sign-ups come from one address: the benchmarks measure the checks,
# not the limits). Extra TOML last.
gate_toml() { # listen_port admin_port upstream_url extra_toml
  cat <<TOML
[server]
listen = "127.0.0.1:$1"
admin_listen = "127.0.0.1:$2"
config_poll_interval = "0s"
[upstream]
url = "$3"
[log]
level = "${GATE_LOG_LEVEL:-warn}"
[rate_limit]
signup_per_ip = 0
signup_per_username = 0
login_per_ip = 0
login_per_username = 0
$4
TOML
}

# A scratch directory in $work, removed on exit with every process whose pid is added to pids.
scratch() {
  work=$(mktemp -d)
  pids=()
  trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
}

# The member and account the benchmark tokens are issued to, and the HS256 secret they are
# signed with.
ACCOUNT=acc-bench-1
MEMBER=mem-bench-1
SECRET=bench-hs256-secret-0123456789abcdef

# The token request the benchmarks send: a password login.
LOGIN='{"data":{"type":"account_management_authentication_token","authentication_mechanism":"password","password_profile_id":"bench-profile","username":"bench@example.com","password":"bench-password"}}'

# wrk's script sending LOGIN, on stdout.
login_lua() {
  cat <<LUA
wrk.method = "POST"
wrk.body = '$LOGIN'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench"
LUA
}

# The static upstream of the load benchmarks, as an nginx configuration on stdout: a token
# request gets the Commerce API's 201 issuing TOKEN to MEMBER on ACCOUNT (valid for a day), any
# other request a small account document.
upstream_nginx_conf() { # port workdir token member account
  local expires answer
  expires=$(python3 -c 'import datetime; print((datetime.datetime.utcnow()+datetime.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z"))')
  answer="{\"meta\":{\"page\":{\"limit\":20,\"offset\":0,\"current\":1,\"total\":1},\"results\":{\"total\":1},\"account_member_id\":\"$4\"},\"data\":[{\"account_name\":\"bench\",\"account_id\":\"$5\",\"token\":\"$3\",\"type\":\"account_management_authentication_token\",\"expires\":\"$expires\"}],\"links\":{}}"
  cat <<NGINX
worker_processes 1;
daemon off;
pid $2/upstream.pid;
error_log $2/upstream-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$1;
    default_type application/json;
    location = /v2/account-members/tokens { return 201 '$answer'; }
    location / { return 200 '{"data":{"id":"$5","type":"account","name":"bench"}}'; }
  }
}
NGINX
}

# nginx as a plain reverse proxy to the upstream on UPSTREAM_PORT (keep-alive connections to
# it, no check of any kind), as an nginx configuration on stdout. LOG is the access_log
# directive (`access_log /dev/stderr;` or `access_log off;`).
nginx_proxy_conf() { # port upstream_port workdir workers log
  cat <<NGINX
worker_processes $4;
daemon off;
pid $3/proxy.pid;
error_log $3/proxy-error.log warn;
events { worker_connections 4096; }
http {
  $5
  upstream origin { server 127.0.0.1:$2; keepalive 64; }
  server {
    listen 127.0.0.1:$1;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
NGINX
}

# A named pipe $work/NAME.pipe that a `cat` on the load core drains, as a container runtime
# drains a process's stderr.
drained_pipe() { # name
  mkfifo "$work/$1.pipe"
  taskset -c "$LOAD_CPU" cat "$work/$1.pipe" > /dev/null & pids+=($!)
}
