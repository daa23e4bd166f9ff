#!/usr/bin/env bash
# The latency the gateway adds over going direct, at fixed request rates (open loop: requests go
# out on schedule whatever the answers do).
#
#   benches/load/openloop.sh                 # 1 000 and 10 000 req/s, 3 rounds of 10 s
#   RATES="1000 5000" ROUNDS=5 DURATION=10 benches/load/openloop.sh
#
# One static nginx upstream; the gateway in its default configuration (issued mode, `info`
# logs with an access line per request into a pipe read by `cat`) pinned to one core; the
# generator (examples/openloop.rs, one thread) and nginx on the other core. Each round runs
# direct and through the gateway, alternating. Prints the medians over the rounds of p50, p99
# and p99.9, and what the gateway adds. tokio's timer sends the requests of each millisecond
# together, so at 10 000 req/s they leave in bursts of 10.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
RATES=${RATES:-"1000 10000"}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}

. benches/load/common.sh
install_missing nginx taskset python3 curl
require nginx python3 curl

cargo build --release --quiet --bin account-gate --example mint --example openloop
BIN=${BIN:-$PWD/target/release/account-gate}
MINT=$PWD/target/release/examples/mint
OPENLOOP=$PWD/target/release/examples/openloop

scratch
TOKEN=$("$MINT" hs256 "$SECRET" "$MEMBER" "$ACCOUNT" 86400)
UP=$(port); GW=$(port)
upstream_nginx_conf "$UP" "$work" "$TOKEN" "$MEMBER" "$ACCOUNT" > "$work/nginx-upstream.conf"
taskset -c "$LOAD_CPU" nginx -c "$work/nginx-upstream.conf" -p "$work" & pids+=($!)
gate_toml "$GW" "$(port)" "http://127.0.0.1:$UP" "[tokens]
unknown = \"reject\"" | sed 's/^level = "warn"/level = "info"/' > "$work/gate.toml"
mkfifo "$work/gate.err"
taskset -c "$LOAD_CPU" cat "$work/gate.err" > /dev/null & pids+=($!)
taskset -c "$PROXY_CPU" "$BIN" run --config "$work/gate.toml" 2>"$work/gate.err" & pids+=($!)

ready() { for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.05; done; echo "port $1 never came up"; exit 1; }
ready "$UP"; ready "$GW"
curl -s -o /dev/null -X POST "http://127.0.0.1:$GW/v2/account-members/tokens" \
  -H 'Content-Type: application/json' -H 'Authorization: Bearer bench' -d "$LOGIN"
ACC_PATH=/v2/accounts/$ACCOUNT/addresses
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$GW$ACC_PATH" -H "EP-Account-Management-Authentication-Token: $TOKEN")
[ "$code" = 200 ] || { echo "the gateway answers $code to the learnt token"; exit 1; }

results=$work/results.tsv
: > "$results"
echo "rounds=$ROUNDS duration=${DURATION}s rates=$RATES; gateway on cpu $PROXY_CPU, generator and upstream on cpu $LOAD_CPU"
for rate in $RATES; do
  for round in $(seq "$ROUNDS"); do
    if [ $((round % 2)) = 0 ]; then order="gateway direct"; else order="direct gateway"; fi
    for target in $order; do
      if [ "$target" = direct ]; then url="http://127.0.0.1:$UP$ACC_PATH"; else url="http://127.0.0.1:$GW$ACC_PATH"; fi
      line=$(taskset -c "$LOAD_CPU" "$OPENLOOP" "$url" "$rate" "$DURATION" "$TOKEN")
      printf '%s\t%s\t%s\t%s\n' "$rate" "$target" "$round" "$line" | tee -a "$results"
    done
  done
done

python3 - "$results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    rate, target, rnd, rest = line.rstrip("\n").split("\t")
    sent, ok, p50, p90, p99, p999, top = (int(x) for x in rest.split())
    rows.setdefault((int(rate), target), []).append((sent, ok, p50, p99, p999))
print(f"\n{'rate':>6} {'target':8} {'ok/sent':>14} {'p50 us':>8} {'p99 us':>8} {'p99.9 us':>9}")
for (rate, target), runs in sorted(rows.items()):
    med = lambda i: statistics.median(r[i] for r in runs)
    print(f"{rate:6} {target:8} {sum(r[1] for r in runs):7}/{sum(r[0] for r in runs):<7}"
          f"{med(2):8.0f} {med(3):8.0f} {med(4):9.0f}")
for rate in sorted({r for r, _ in rows}):
    d, g = rows[(rate, "direct")], rows[(rate, "gateway")]
    added = lambda i: statistics.median(b[i] - a[i] for a, b in zip(d, g))
    print(f"at {rate} req/s the gateway adds p50 {added(2):.0f} us, p99 {added(3):.0f} us, "
          f"p99.9 {added(4):.0f} us (same-round medians)")
PY
