#!/usr/bin/env bash
# Memory of the gateway as run.sh measures it (idle RSS right after start-up, RSS holding 1 000
# idle keep-alive HTTP/1 connections that were answered one request each, start-up time), for
# one serving thread and for the default (one per CPU), RUNS fresh gateways each, alternating;
# prints every run and the median (min-max) of each figure.
#
#   benches/load/memory.sh                       # 3 runs of each, this build
#   RUNS=5 BIN=/path/to/account-gate benches/load/memory.sh
#   THREADS="1 0 2" benches/load/memory.sh        # the `server.worker_threads` values to measure
#   SETTLE=12 benches/load/memory.sh              # also the RSS 12 s later, connections still held
#                                                 # (what the allocator kept of the burst of 1 000
#                                                 # requests is returned by then, or kept for good)
#
# The gateway's environment is passed on, so an allocator option can be tried without a build:
# `_RJEM_MALLOC_CONF=narenas:1 benches/load/memory.sh` (tikv-jemallocator's prefixed jemalloc).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-3}
THREADS=${THREADS:-1 0}
CONNS=${CONNS:-1000}
SETTLE=${SETTLE:-}

. benches/load/common.sh
install_missing nginx python3 curl
require nginx python3 curl

if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bin account-gate
  BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/account-gate
fi

scratch
UP=$(port)
upstream_nginx_conf "$UP" "$work" "unused" "$MEMBER" "$ACCOUNT" > "$work/nginx-upstream.conf"
nginx -c "$work/nginx-upstream.conf" -p "$work" & pids+=($!)
for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$UP/" && break; sleep 0.05; done

rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
results=$work/memory.tsv
: > "$results"
for run in $(seq "$RUNS"); do
  for threads in $THREADS; do
    gw=$(port); admin=$(port)
    # gate_toml opens [server]; the thread count goes in it.
    gate_toml "$gw" "$admin" "http://127.0.0.1:$UP" "" |
      sed "s/^\[server\]$/[server]\nworker_threads = $threads/" > "$work/mem.toml"
    read -r start_ms pid < <(python3 benches/load/startup.py "$BIN" "$work/mem.toml" "$admin")
    idle=$(rss "$pid")
    read -r conns settled < <(python3 benches/load/idle_conns.py "$gw" "$CONNS" "$pid" $SETTLE)
    kill "$pid"; wait "$pid" 2>/dev/null || true
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$threads" "$run" "$idle" "$conns" "$start_ms" "${settled:-}" |
      tee -a "$results"
  done
done

python3 - "$results" "$CONNS" "$SETTLE" <<'PY'
import statistics, sys
rows = [line.split("\t") for line in open(sys.argv[1]).read().split("\n") if line]
conns, settle = sys.argv[2], sys.argv[3]
def fig(values):
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"
header = f"worker_threads  runs  idle RSS MiB      {conns} conns RSS MiB  start-up ms"
print(header + (f"          after {settle} s more MiB" if settle else ""))
print("(median (min-max))")
for threads in dict.fromkeys(r[0] for r in rows):
    mine = [r for r in rows if r[0] == threads]
    line = f"{threads:>14}  {len(mine):>4}  {fig([int(r[2]) / 1024 for r in mine]):<17} "
    line += f"{fig([int(r[3]) / 1024 for r in mine]):<21} {fig([float(r[4]) for r in mine]):<20}"
    if settle:
        line += f" {fig([int(r[5]) / 1024 for r in mine])}"
    print(line)
PY
