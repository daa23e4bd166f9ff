#!/usr/bin/env bash
# One multi-thread runtime over the cores, or one single-threaded gateway per core? Measures the
# second shape without building it: two gateway processes, each pinned to its own core (so each
# runs the current-thread runtime), each loaded by a wrk of its own with half the connections,
# as SO_REUSEPORT listeners would split them; against one gateway given both cores (the default
# runtime: one multi-thread runtime with a worker per core) loaded by one wrk with every
# connection. Same rounds, alternating; issued mode, proxied GETs, access lines on (drained
# pipes).
#
#   benches/load/percore.sh                  # 5 rounds of 5 s, 32 connections in all
#   ROUNDS=9 DURATION=5 CONNS=64 benches/load/percore.sh
#
# Needs two cores; the gateways, wrk and the static nginx upstream all share them, so the sum is
# what the shape gets out of the machine with its load generator, not a per-core figure.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
CONNS=${CONNS:-32}
LOAD_CPU=0,1

. benches/load/common.sh
install_missing nginx wrk taskset python3 curl
require nginx wrk python3 curl
[ "$(nproc)" -ge 2 ] || { echo "needs two cores"; exit 1; }

build_for_bench release mint
BIN=${BIN:-$PWD/target/release/account-gate}
MINT=$PWD/target/release/examples/mint

scratch
TOKEN=$("$MINT" hs256 "$SECRET" "$MEMBER" "$ACCOUNT" 86400)
UP=$(port)
upstream_nginx_conf "$UP" "$work" "$TOKEN" "$MEMBER" "$ACCOUNT" > "$work/nginx-upstream.conf"
taskset -c 0,1 nginx -c "$work/nginx-upstream.conf" -p "$work" & pids+=($!)

export GATE_LOG_LEVEL=info
start_gate() { # name cpus
  local gw
  gw=$(port)
  gate_toml "$gw" "$(port)" "http://127.0.0.1:$UP" "[tokens]
unknown = \"reject\"" > "$work/$1.toml"
  drained_pipe "$1"
  taskset -c "$2" "$BIN" run --config "$work/$1.toml" 2>"$work/$1.pipe" & pids+=($!)
  eval "port_$1=$gw"
}
start_gate shared 0,1
start_gate core0 0
start_gate core1 1

ACC_PATH=/v2/accounts/$ACCOUNT/addresses
ready() { for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.05; done; echo "port $1 never came up"; exit 1; }
for p in "$UP" "$port_shared" "$port_core0" "$port_core1"; do
  ready "$p"
  [ "$p" = "$UP" ] && continue
  curl -s -o /dev/null -X POST "http://127.0.0.1:$p/v2/account-members/tokens" \
    -H 'Content-Type: application/json' -H 'Authorization: Bearer bench' -d "$LOGIN"
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$p$ACC_PATH" -H "EP-Account-Management-Authentication-Token: $TOKEN")
  [ "$code" = 200 ] || { echo "gateway on $p answers $code"; exit 1; }
done

rps() { python3 -c 'import re,sys; print(re.search(r"Requests/sec:\s+([\d.]+)", open(sys.argv[1]).read()).group(1))' "$1"; }
load() { # cpus port threads connections output
  taskset -c "$1" wrk -t"$3" -c"$4" -d"${DURATION}s" \
    -H "EP-Account-Management-Authentication-Token: $TOKEN" "http://127.0.0.1:$2$ACC_PATH" > "$5"
}
# One wrk with every connection against the gateway on both cores.
shared() { load 0,1 "$port_shared" 2 "$CONNS" "$work/shared.out"; }
# A wrk per core, each with half the connections, against the gateway on the other core: as
# with remote clients, a connection's packets arrive wherever they arrive, not on the core of
# the thread that serves it (a wrk on the gateway's own core would keep every wake-up local,
# which no real client does for a gateway).
split() {
  load 1 "$port_core0" 1 $((CONNS / 2)) "$work/core0.out" & local first=$!
  load 0 "$port_core1" 1 $((CONNS / 2)) "$work/core1.out"
  wait "$first"
}
echo "rounds=$ROUNDS duration=${DURATION}s connections=$CONNS, everything on cpus 0,1"
ratios=()
for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then shared; split; else split; shared; fi
  one=$(rps "$work/shared.out")
  two=$(python3 -c 'import sys; print(float(sys.argv[1]) + float(sys.argv[2]))' \
    "$(rps "$work/core0.out")" "$(rps "$work/core1.out")")
  ratio=$(python3 -c 'import sys; print(f"{float(sys.argv[1]) / float(sys.argv[2]):.3f}")' "$two" "$one")
  ratios+=("$ratio")
  echo "round $round: one runtime on both cores $one req/s; a gateway per core $two req/s; per-core / shared $ratio"
done
python3 -c 'import statistics,sys; r=sorted(map(float, sys.argv[1:])); print(f"median per-core / shared: {statistics.median(r):.3f} (rounds {r})")' "${ratios[@]}"
