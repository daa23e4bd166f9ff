#!/usr/bin/env bash
# A bounded soak: a gateway in front of the emulator takes a steady mix of sign-ups,
# valid, cross-account, tampered, revoked and missing tokens at RPS for SECONDS; every answer is
# checked against the decision it must get; the gateway's RSS is sampled every 30 s. Not in CI.
#
#   benches/load/soak.sh [RPS, default 10000] [SECONDS, default 300]
#
# Everything listens on 127.0.0.1 and the run stops by itself after SECONDS.
set -euo pipefail
cd "$(dirname "$0")/../.."
RPS=${1:-10000}
SECONDS_TO_RUN=${2:-300}
. benches/load/common.sh
build_for_bench release soak
scratch
GW=$(port); ADMIN=$(port); EMU=$(port)
# The default store (100 000) fills within a minute at 10 % sign-ups; the full store then evicts
# the least recently used tokens, never the soak's members, which use theirs all the time. A
# larger STORE_ENTRIES shows how RSS grows with the tokens held.
gate_toml "$GW" "$ADMIN" "http://127.0.0.1:$EMU" "[tokens]
unknown = \"reject\"
[store]
max_entries = ${STORE_ENTRIES:-100000}" > "$work/gate.toml"
taskset -c 0 target/release/account-gate run --config "$work/gate.toml" & gate=$!
pids+=("$gate")
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$ADMIN/readyz" && break; sleep 0.05; done
taskset -c 1 target/release/examples/soak "$GW" "$EMU" "$RPS" "$SECONDS_TO_RUN" "$gate"
