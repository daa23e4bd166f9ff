#!/usr/bin/env bash
# The latency the gateway adds over going direct, at fixed request rates (open loop: requests go
# out on schedule whatever the answers do).
#
#   benches/load/openloop.sh                 # 1 000 and 10 000 req/s, 3 rounds of 10 s
#   RATES="1000 5000" ROUNDS=5 DURATION=10 CONNS=64 benches/load/openloop.sh
#   PROXY_CPU=1 benches/load/openloop.sh     # the proxies on the generator's core too
#
# One static nginx upstream; the gateway in its default configuration (issued mode, `info`
# logs with an access line per request into a pipe read by `cat`) pinned to one core; the
# generator (examples/openloop.rs: a thread releasing the requests on schedule, one runtime
# thread sending them over CONNS keep-alive connections opened up front, 64 unless set) and
# nginx on the other core. For reference, an nginx `proxy_pass` (with its access log into a
# pipe too) on the gateway's core: what any proxy there adds, the gateway's work aside. Each
# round runs direct, through nginx and through the gateway, in a rotating order. Prints every
# round's line, then the medians over the rounds of p50, p99 and p99.9 with the requests that
# failed or were never sent, and what each proxy adds.
#
# Where the proxy runs matters on a VM: a request through a proxy on an idle core wakes that
# core and then the generator's core again, and waking a halted virtual CPU takes tens of
# microseconds or more. PROXY_CPU=1 keeps every hop on one core, as a sidecar sharing its pod's
# CPU with the application would. A latency runs from the request's
# release (normally tens of microseconds after it was due; the release lag's p99 and maximum are
# in each round's line) and includes any wait for a free connection.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
RATES=${RATES:-"1000 10000"}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
CONNS=${CONNS:-64}

. benches/load/common.sh
install_missing nginx taskset python3 curl
require nginx python3 curl

build_for_bench release mint openloop
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
BIN=${BIN:-$TARGET_DIR/release/account-gate}
MINT=$TARGET_DIR/release/examples/mint
OPENLOOP=$TARGET_DIR/release/examples/openloop

scratch
TOKEN=$("$MINT" hs256 "$SECRET" "$MEMBER" "$ACCOUNT" 86400)
UP=$(port); GW=$(port); NGX=$(port)
upstream_nginx_conf "$UP" "$work" "$TOKEN" "$MEMBER" "$ACCOUNT" > "$work/nginx-upstream.conf"
taskset -c "$LOAD_CPU" nginx -c "$work/nginx-upstream.conf" -p "$work" & pids+=($!)
gate_toml "$GW" "$(port)" "http://127.0.0.1:$UP" "[tokens]
unknown = \"reject\"" | sed 's/^level = "warn"/level = "info"/' > "$work/gate.toml"
mkfifo "$work/gate.err"
taskset -c "$LOAD_CPU" cat "$work/gate.err" > /dev/null & pids+=($!)
taskset -c "$PROXY_CPU" "$BIN" run --config "$work/gate.toml" 2>"$work/gate.err" & pids+=($!)
nginx_proxy_conf "$NGX" "$UP" "$work" 1 "access_log /dev/stderr;" > "$work/nginx-proxy.conf"
mkfifo "$work/nginx.err"
taskset -c "$LOAD_CPU" cat "$work/nginx.err" > /dev/null & pids+=($!)
taskset -c "$PROXY_CPU" nginx -c "$work/nginx-proxy.conf" -p "$work" 2>"$work/nginx.err" & pids+=($!)

ready() { for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.05; done; echo "port $1 never came up"; exit 1; }
ready "$UP"; ready "$GW"; ready "$NGX"
curl -s -o /dev/null -X POST "http://127.0.0.1:$GW/v2/account-members/tokens" \
  -H 'Content-Type: application/json' -H 'Authorization: Bearer bench' -d "$LOGIN"
ACC_PATH=/v2/accounts/$ACCOUNT/addresses
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$GW$ACC_PATH" -H "EP-Account-Management-Authentication-Token: $TOKEN")
[ "$code" = 200 ] || { echo "the gateway answers $code to the learnt token"; exit 1; }

results=$work/results.tsv
: > "$results"
echo "rounds=$ROUNDS duration=${DURATION}s rates=$RATES conns=$CONNS; proxies on cpu $PROXY_CPU, generator and upstream on cpu $LOAD_CPU"
echo "columns: rate target round scheduled ok failed unsent p50 p90 p99 p99.9 max (us) release-lag p99 max (us)"
for rate in $RATES; do
  for round in $(seq "$ROUNDS"); do
    case $((round % 3)) in
      1) order="direct nginx gateway" ;;
      2) order="gateway direct nginx" ;;
      0) order="nginx gateway direct" ;;
    esac
    for target in $order; do
      case $target in
        direct) url="http://127.0.0.1:$UP$ACC_PATH" ;;
        nginx) url="http://127.0.0.1:$NGX$ACC_PATH" ;;
        gateway) url="http://127.0.0.1:$GW$ACC_PATH" ;;
      esac
      line=$(taskset -c "$LOAD_CPU" "$OPENLOOP" "$url" "$rate" "$DURATION" "$TOKEN" --conns "$CONNS")
      printf '%s\t%s\t%s\t%s\n' "$rate" "$target" "$round" "$line" | tee -a "$results"
    done
  done
done

python3 - "$results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    rate, target, rnd, rest = line.rstrip("\n").split("\t")
    scheduled, ok, failed, unsent, p50, p90, p99, p999, top, lag99, lagmax = (int(x) for x in rest.split())
    rows.setdefault((int(rate), target), []).append((scheduled, ok, failed, unsent, p50, p99, p999))
print(f"\n{'rate':>6} {'target':8} {'ok/scheduled':>15} {'failed':>7} {'unsent':>7} {'p50 us':>8} {'p99 us':>8} {'p99.9 us':>9}")
incomplete = 0
for (rate, target), runs in sorted(rows.items()):
    med = lambda i: statistics.median(r[i] for r in runs)
    total = lambda i: sum(r[i] for r in runs)
    incomplete += total(2) + total(3)
    print(f"{rate:6} {target:8} {total(1):7}/{total(0):<7} {total(2):7} {total(3):7}"
          f"{med(4):8.0f} {med(5):8.0f} {med(6):9.0f}")
for rate in sorted({r for r, _ in rows}):
    d = rows[(rate, "direct")]
    for proxy in ("nginx", "gateway"):
        p = rows[(rate, proxy)]
        added = lambda i: statistics.median(b[i] - a[i] for a, b in zip(d, p))
        print(f"at {rate} req/s {proxy} adds p50 {added(4):.0f} us, p99 {added(5):.0f} us, "
              f"p99.9 {added(6):.0f} us (same-round medians)")
if incomplete:
    print(f"WARNING: {incomplete} requests failed or were never sent; the percentiles cover "
          "only the answered ones, so those rounds understate the latency")
PY
