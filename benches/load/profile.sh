#!/usr/bin/env bash
# Where the gateway's core goes under load: perf call graphs of one gateway (issued mode, one
# worker, pinned to one core) proxying to the load benchmark's static nginx upstream, drawn as
# flame graphs, for the two workloads of run.sh that are measured against nginx: the
# account-scoped GET and the sign-up POST. Not in CI.
#
#   benches/load/profile.sh              # 5 s of perf per workload, 32 connections
#   DURATION=10 CONNS=64 benches/load/profile.sh
#
# Needs perf (Debian: linux-perf) with perf_event_paranoid <= 2 or root, nginx, wrk and
# inferno (cargo install inferno); installs what is missing when it can. Writes
# benches/results/flamegraph-get.svg and flamegraph-signup.svg and prints the split between
# kernel and user space and the heaviest user-space crates. Everything listens on 127.0.0.1;
# every wrk run stops by itself.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-5}
CONNS=${CONNS:-32}

. benches/load/common.sh
install_missing nginx wrk perf taskset python3 curl
require nginx wrk perf python3 curl
if ! command -v inferno-flamegraph >/dev/null 2>&1; then
  echo "installing inferno (cargo install inferno)"
  cargo install --quiet --locked inferno
fi

# Release code with symbols (profile `profiling` in Cargo.toml).
build_for_bench profiling mint
BIN=$PWD/target/profiling/account-gate
MINT=$PWD/target/profiling/examples/mint

scratch

TOKEN=$("$MINT" hs256 "$SECRET" "$MEMBER" "$ACCOUNT" 86400)
UP=$(port); GW=$(port)
upstream_nginx_conf "$UP" "$work" "$TOKEN" "$MEMBER" "$ACCOUNT" > "$work/nginx-upstream.conf"
gate_toml "$GW" "$(port)" "http://127.0.0.1:$UP" "[tokens]
unknown = \"reject\"" > "$work/gate.toml"
taskset -c 1 nginx -c "$work/nginx-upstream.conf" -p "$work" & pids+=($!)
taskset -c 0 "$BIN" run --config "$work/gate.toml" 2>"$work/gate.log" & gate=$!
pids+=("$gate")
for p in $UP $GW; do
  for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$p/" && break; sleep 0.05; done
done
# Teach the gateway the token: a login through it.
curl -s -o /dev/null -X POST "http://127.0.0.1:$GW/v2/account-members/tokens" \
  -H 'Content-Type: application/json' -H 'Authorization: Bearer bench' -d "$LOGIN"
status=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$GW/v2/accounts/$ACCOUNT/addresses" \
  -H "EP-Account-Management-Authentication-Token: $TOKEN")
[ "$status" = 200 ] || { echo "the gateway answered $status to its own token"; exit 1; }
login_lua > "$work/login.lua"

profile() { # name wrk-args...
  local name=$1; shift
  # wrk runs a little longer than perf, which starts once the load is up.
  taskset -c 1 wrk -t1 -c"$CONNS" -d"$((DURATION + 3))s" "$@" > "$work/$name.wrk" &
  local load=$!
  sleep 1
  perf record -q -F 999 --call-graph dwarf,16384 -p "$gate" -o "$work/$name.data" -- sleep "$DURATION" 2>/dev/null
  wait "$load"
  echo "== $name: $(awk '/Requests\/sec/ {print $2}' "$work/$name.wrk") req/s under perf"
  perf report -i "$work/$name.data" --no-children --sort dso -g none 2>/dev/null \
    | awk '/%/ && !/^#/ {printf "   %s %s\n", $1, $2}' | head -4
  perf script -i "$work/$name.data" 2>/dev/null | inferno-collapse-perf --kernel > "$work/$name.folded"
  # The heaviest user-space crates, by self time (leaf frames), as shares of the whole core.
  python3 - "$work/$name.folded" <<'PY'
import collections, re, sys
# Self time per crate: a leaf in core/alloc/std (inlined helpers, mostly) counts for the first
# caller that belongs to a crate of its own.
GENERIC = {"core", "alloc", "std", "u8", "u16", "u32", "u64", "usize", "i64", "str", "T", "F", "&", "&mut", "*"}
crates, total = collections.Counter(), 0
for line in open(sys.argv[1]):
    stack, _, count = line.rstrip().rpartition(" ")
    count = int(count); total += count
    frames = stack.split(";")
    if frames[-1].endswith("_[k]"):
        continue
    name = "other"
    for frame in reversed(frames):
        if "memmove" in frame or "memcpy" in frame:
            name = "memmove/memcpy"; break
        crate = re.split(r"::|<| |\(|\[", frame.lstrip("<&*[ "))[0]
        if crate and crate not in GENERIC:
            name = crate; break
    crates[name] += count
print("   user space by crate (self), share of the core:", ", ".join(
    f"{name} {100 * n / total:.1f}%" for name, n in crates.most_common(9)))
PY
  inferno-flamegraph --minwidth 0.3 --title "account-gate, $name, one core (perf, $DURATION s)" \
    < "$work/$name.folded" > "benches/results/flamegraph-$name.svg"
}

profile get -H "EP-Account-Management-Authentication-Token: $TOKEN" \
  "http://127.0.0.1:$GW/v2/accounts/$ACCOUNT/addresses"
profile signup -s "$work/login.lua" "http://127.0.0.1:$GW/v2/account-members/tokens"
echo "wrote benches/results/flamegraph-get.svg and benches/results/flamegraph-signup.svg"
