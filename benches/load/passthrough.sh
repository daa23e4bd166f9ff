#!/usr/bin/env bash
# Pass-through throughput and memory: account-gate vs nginx as a reverse proxy, both in front of
# the same nginx upstream on loopback, measured in one run and reported as ratios (this machine is
# shared; absolute numbers drift, ratios much less).
#
#   benches/load/passthrough.sh [seconds per run, default 10] [connections, default 32]
#
# Needs nginx and wrk (apt-get install nginx wrk) and a release build (cargo build --release).
# Every target is on 127.0.0.1; each wrk run is bounded by its duration.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${1:-10}
CONNS=${2:-32}
WORKERS=${WORKERS:-1}
BIN=target/release/account-gate
[ -x "$BIN" ] || cargo build --release --quiet
command -v nginx >/dev/null && command -v wrk >/dev/null || { echo "needs nginx and wrk"; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); NGX=$(free_port); GW=$(free_port); ADM=$(free_port)

cat > "$work/nginx.conf" <<NGINX
worker_processes $WORKERS;
daemon off;
pid $work/nginx.pid;
error_log $work/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream origin { server 127.0.0.1:$UP; keepalive 64; }
  server { listen 127.0.0.1:$UP; location / { return 200 '{"data":[]}'; } }
  server {
    listen 127.0.0.1:$NGX;
    location / {
      proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work" & pids+=($!)

cat > "$work/gate.toml" <<TOML
[server]
listen = "127.0.0.1:$GW"
admin_listen = "127.0.0.1:$ADM"
worker_threads = $WORKERS
[upstream]
url = "http://127.0.0.1:$UP"
[log]
level = "warn"
TOML
"$BIN" run --config "$work/gate.toml" & gate=$!; pids+=($gate)

for port in $UP $NGX $GW; do
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
done
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
idle_rss=$(rss $gate)

run() { wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "$1" | awk '/Requests\/sec/ {print $2} /^ +99%/ {print $2}' | paste -sd' '; }
echo "workers=$WORKERS connections=$CONNS duration=${DURATION}s"
read -r direct_p99 direct_rps <<<"$(run "http://127.0.0.1:$UP/")"
read -r nginx_p99 nginx_rps <<<"$(run "http://127.0.0.1:$NGX/v2/carts")"
read -r gate_p99 gate_rps <<<"$(run "http://127.0.0.1:$GW/v2/carts")"
loaded_rss=$(rss $gate)
printf '%-28s %10s %8s\n' target req/s p99
printf '%-28s %10s %8s\n' "upstream direct" "$direct_rps" "$direct_p99"
printf '%-28s %10s %8s\n' "nginx proxy" "$nginx_rps" "$nginx_p99"
printf '%-28s %10s %8s\n' "account-gate" "$gate_rps" "$gate_p99"
python3 -c "print(f'account-gate / nginx proxy throughput: {$gate_rps/$nginx_rps:.2f}')"
echo "account-gate RSS: idle ${idle_rss} KiB, after load ${loaded_rss} KiB; binary $(stat -c %s "$BIN") bytes"
