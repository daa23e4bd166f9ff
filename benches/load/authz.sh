#!/usr/bin/env bash
# Decisions per second of the authz listener ([authz] listen), beside a proxied GET of the same
# gateway: how much one decision costs an ingress's gateway compared with the request it would
# otherwise proxy.
#
#   benches/load/authz.sh                 # 3 rounds of 5 s per target, 32 connections
#   ROUNDS=5 DURATION=10 CONNS=64 benches/load/authz.sh
#
# One gateway (issued mode, unknown = "reject", one worker thread) on one core (taskset -c 0),
# in front of the static nginx upstream of run.sh; wrk and the upstream on the other core. Its
# token is learnt from a login through its proxy, then checked: the authz listener must answer
# 200 with X-Account-Id for the own account, 403 for another, 401 without a token. Targets, each
# round in alternating order: a proxied account-scoped GET, and decisions asked the nginx way
# (X-Original-Method, X-Original-URI) that are allowed and that are refused (another account).
# Everything listens on 127.0.0.1 and every wrk run stops by itself after DURATION seconds.
#
# Prints one row per target: median req/s, p50, p99, the gateway's CPU time per request (user,
# kernel) and the requests one core's worth of CPU answers (1 s / CPU per request).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONNS=${CONNS:-32}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}

. benches/load/common.sh
install_missing nginx wrk taskset python3 curl
require nginx wrk python3 curl

build_for_bench release mint
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
BIN=$TARGET_DIR/release/account-gate
MINT=$TARGET_DIR/release/examples/mint

scratch

TOKEN=$("$MINT" hs256 "$SECRET" "$MEMBER" "$ACCOUNT" 86400)
UP=$(port); GW=$(port); AUTHZ=$(port)
upstream_nginx_conf "$UP" "$work" "$TOKEN" "$MEMBER" "$ACCOUNT" > "$work/nginx-upstream.conf"
gate_toml "$GW" "$(port)" "http://127.0.0.1:$UP" "[tokens]
unknown = \"reject\"
[authz]
listen = \"127.0.0.1:$AUTHZ\"" > "$work/gate.toml"

taskset -c "$LOAD_CPU" nginx -c "$work/nginx-upstream.conf" -p "$work" & pids+=($!)
taskset -c "$PROXY_CPU" "$BIN" run --config "$work/gate.toml" 2>"$work/gate.log" & pids+=($!)
pid_gate=$!
ready() { for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.05; done; echo "port $1 never came up"; exit 1; }
for p in $UP $GW $AUTHZ; do ready "$p"; done

curl -s -o /dev/null -X POST "http://127.0.0.1:$GW/v2/account-members/tokens" \
  -H 'Content-Type: application/json' -H 'Authorization: Bearer bench' -d "$LOGIN"

ACC_PATH=/v2/accounts/$ACCOUNT/addresses
OTHER_PATH=/v2/accounts/someone-else/addresses
TOKEN_HEADER="EP-Account-Management-Authentication-Token: $TOKEN"
decide() { # target [token header]
  curl -s -o /dev/null -D - "http://127.0.0.1:$AUTHZ/_account_gate" \
    -H "X-Original-Method: GET" -H "X-Original-URI: $1" ${2:+-H "$2"}
}
own=$(decide "$ACC_PATH" "$TOKEN_HEADER")
other=$(decide "$OTHER_PATH" "$TOKEN_HEADER" | head -n1)
none=$(decide "$ACC_PATH" | head -n1)
echo "check: own $(echo "$own" | head -n1 | tr -d '\r'), other account $(echo "$other" | tr -d '\r'), no token $(echo "$none" | tr -d '\r')"
echo "$own" | head -n1 | grep -q ' 200' && echo "$own" | grep -qi "^x-account-id: $ACCOUNT" \
  && echo "$other" | grep -q ' 403' && echo "$none" | grep -q ' 401' \
  || { echo "the authz listener does not decide as expected"; exit 1; }

ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
results=$work/results.tsv
# name|url|extra headers (one per line)
targets=(
  "proxied-get|http://127.0.0.1:$GW$ACC_PATH|$TOKEN_HEADER"
  "decision-allowed|http://127.0.0.1:$AUTHZ/_account_gate|$TOKEN_HEADER
X-Original-Method: GET
X-Original-URI: $ACC_PATH"
  "decision-refused|http://127.0.0.1:$AUTHZ/_account_gate|$TOKEN_HEADER
X-Original-Method: GET
X-Original-URI: $OTHER_PATH"
)
echo "rounds=$ROUNDS duration=${DURATION}s connections=$CONNS gateway on cpu $PROXY_CPU, wrk+upstream on cpu $LOAD_CPU"
for round in $(seq "$ROUNDS"); do
  order=("${targets[@]}")
  if [ $((round % 2)) = 0 ]; then
    order=(); for ((i=${#targets[@]}-1; i>=0; i--)); do order+=("${targets[$i]}"); done
  fi
  for t in "${order[@]}"; do
    IFS='|' read -r name url headers <<<"$(echo "$t" | tr '\n' '\v')"
    args=()
    while IFS= read -r h; do [ -n "$h" ] && args+=(-H "$h"); done < <(echo "$headers" | tr '\v' '\n')
    read -r user0 sys0 < <(ticks "$pid_gate")
    out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "${args[@]}" "$url")
    read -r user1 sys1 < <(ticks "$pid_gate")
    echo "$out" | python3 benches/load/parse_wrk.py "$name" "$round" $((user1 - user0)) $((sys1 - sys0)) "$HZ" >> "$results"
  done
done

python3 - "$results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, _round, rps, p50, p99, bad, user, system = line.split("\t")
    rows.setdefault(name, []).append((float(rps), float(p50), float(p99), int(bad), float(user), float(system)))
print(f"{'target':<18}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}{'user us':>9}{'sys us':>8}{'per core/s':>12}")
for name, runs in rows.items():
    med = [statistics.median(r[i] for r in runs) for i in range(6)]
    per_core = statistics.median(1e6 / (r[4] + r[5]) for r in runs)
    print(f"{name:<18}{med[0]:>10.0f}{med[1]:>9.3f}{med[2]:>9.3f}{int(med[3]):>9}{med[4]:>9.2f}{med[5]:>8.2f}{per_core:>12.0f}")
PY
