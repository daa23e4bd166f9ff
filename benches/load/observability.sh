#!/usr/bin/env bash
# What traces and access lines cost a request, in one run, as ratios of the same round.
# By default, traces: the gateway with tracing off, with tracing on at 100 % sampling (every
# request exported, three spans each: request, token check and upstream call, the memory store
# having none), and an older build without tracing at all. With LOGS=1, access lines: this
# build logging at `info` (one access line a request) and at `warn` (none), and the older build
# at `info`. Every stderr is a pipe read by `cat` on the load core, as a container runtime reads
# it.
#
#   BASE_BIN=/path/to/older/account-gate benches/load/observability.sh
#   BIN=/path/to/this/account-gate BASE_BIN=... ROUNDS=9 DURATION=5 benches/load/observability.sh
#   LOGS=1 BASE_BIN=... benches/load/observability.sh
#
# Like run.sh: one static nginx upstream (which also swallows the OTLP exports, answering 200),
# every gateway on the same single core with one worker thread, issued mode, proxied GETs with
# the account token, wrk and nginx on the other core, targets alternating each round. Prints
# each round and the medians of the same-round ratios, and the CPU time per request each
# gateway spent.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
CONNS=${CONNS:-32}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
: "${BASE_BIN:?set BASE_BIN to an account-gate build to compare with}"

. benches/load/common.sh
install_missing nginx wrk taskset python3 curl
require nginx wrk python3 curl

if [ -z "${BIN:-}" ]; then
  build_for_bench release mint
  BIN=$PWD/target/release/account-gate
fi
MINT=${MINT:-$(dirname "$BIN")/examples/mint}
[ -x "$MINT" ] || { cargo build --release --quiet --example mint; MINT=$PWD/target/release/examples/mint; }

scratch
TOKEN=$("$MINT" hs256 "$SECRET" "$MEMBER" "$ACCOUNT" 86400)
UP=$(port)
# The upstream, plus a collector that takes every export and answers 200.
upstream_nginx_conf "$UP" "$work" "$TOKEN" "$MEMBER" "$ACCOUNT" |
  sed 's|    location / {|    location = /v1/traces { client_max_body_size 16m; return 200; }\n    location / {|' \
    > "$work/nginx-upstream.conf"
taskset -c "$LOAD_CPU" nginx -c "$work/nginx-upstream.conf" -p "$work" & pids+=($!)

LOGS=${LOGS:-0}
start_gate() { # name binary level env...
  local name=$1 bin=$2 level=$3 gw
  shift 3
  gw=$(port)
  gate_toml "$gw" "$(port)" "http://127.0.0.1:$UP" "[tokens]
unknown = \"reject\"" | sed "s/^level = \"warn\"/level = \"$level\"/" > "$work/$name.toml"
  mkfifo "$work/$name.err"
  taskset -c "$LOAD_CPU" cat "$work/$name.err" > /dev/null & pids+=($!)
  env "$@" taskset -c "$PROXY_CPU" "$bin" run --config "$work/$name.toml" 2>"$work/$name.err" &
  pids+=($!)
  eval "pid_$name=$! port_$name=$gw"
}
if [ "$LOGS" = 1 ]; then
  targets=(base info warn)
  start_gate base "$BASE_BIN" info
  start_gate info "$BIN" info
  start_gate warn "$BIN" warn
else
  targets=(base off on)
  start_gate base "$BASE_BIN" warn
  start_gate off "$BIN" warn
  start_gate on "$BIN" warn OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$UP" OTEL_TRACES_SAMPLER=always_on
fi

ACC_PATH=/v2/accounts/$ACCOUNT/addresses
ready() { for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.05; done; echo "port $1 never came up"; exit 1; }
eval "gate_ports=\"\$port_${targets[0]} \$port_${targets[1]} \$port_${targets[2]}\""
for p in "$UP" $gate_ports; do ready "$p"; done
for p in $gate_ports; do
  curl -s -o /dev/null -X POST "http://127.0.0.1:$p/v2/account-members/tokens" \
    -H 'Content-Type: application/json' -H 'Authorization: Bearer bench' -d "$LOGIN"
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$p$ACC_PATH" -H "EP-Account-Management-Authentication-Token: $TOKEN")
  [ "$code" = 200 ] || { echo "port $p answers $code to the learnt token"; exit 1; }
done

ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
results=$work/results.tsv
: > "$results"
echo "rounds=$ROUNDS duration=${DURATION}s connections=$CONNS gateways on cpu $PROXY_CPU, wrk+upstream+collector on cpu $LOAD_CPU"
for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) = 0 ]; then order="2 1 0"; else order="0 1 2"; fi
  for i in $order; do
    name=${targets[$i]}
    eval "pid=\$pid_$name gw=\$port_$name"
    read -r user0 sys0 < <(ticks "$pid")
    out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency \
      -H "EP-Account-Management-Authentication-Token: $TOKEN" "http://127.0.0.1:$gw$ACC_PATH")
    read -r user1 sys1 < <(ticks "$pid")
    echo "$out" | python3 benches/load/parse_wrk.py "$name" "$round" $((user1 - user0)) $((sys1 - sys0)) "$HZ" >> "$results"
    tail -n1 "$results"
  done
done

python3 - "$results" "${targets[@]}" <<'PY'
import statistics, sys
names = sys.argv[2:]
rows = [line.split("\t") for line in open(sys.argv[1]) if line.strip()]
by = {}
for name, rnd, rps, p50, p99, bad, user, system in rows:
    by.setdefault(name, {})[int(rnd)] = (float(rps), float(p99), float(user) + float(system), int(bad))
bad = sum(v[3] for r in by.values() for v in r.values())
print(f"\nnon-2xx or socket errors: {bad}")
print(f"{'target':6} {'req/s (median)':>15} {'p99 ms':>8} {'cpu us/req':>11}")
for name in names:
    vals = by[name].values()
    print(f"{name:6} {statistics.median(v[0] for v in vals):15.0f} "
          f"{statistics.median(v[1] for v in vals):8.3f} {statistics.median(v[2] for v in vals):11.2f}")
rounds = sorted(by[names[0]])
ratio = lambda a, b: statistics.median(by[a][r][0] / by[b][r][0] for r in rounds)
extra = lambda a, b: statistics.median(by[a][r][2] - by[b][r][2] for r in rounds)
base, this, other = names
print(f"\nsame-round medians: {this}/{base} {ratio(this, base):.3f}, {other}/{this} {ratio(other, this):.3f}, "
      f"{other} - {this}: {extra(other, this):+.2f} us of CPU per request, {base} - {other}: {extra(base, other):+.2f}")
PY
