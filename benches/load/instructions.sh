#!/usr/bin/env bash
# User-space instructions per request, counted by callgrind: a measure of the gateway's own work
# that the machine's speed does not move, for changes too small for a wall-clock A/B to show.
# It is not exact: how often tasks are woken depends on timing, and on a busy machine seven runs
# of one build spread over 59 658-60 629 per proxied GET (2026-11-30, 2-core VM). Compare
# medians of alternating runs of both builds. Not in CI.
#
#   benches/load/instructions.sh                  # proxied GET and sign-up, issued mode
#   BIN=/path/to/other/account-gate benches/load/instructions.sh   # another build, same run
#
# One gateway runs under valgrind in front of the load benchmark's static nginx upstream and
# answers N1, then (in a fresh process) N2 keep-alive requests from one client; the difference
# of the two totals over N2 - N1 is the cost of one request, start-up and shutdown cancelled
# out. SHA-256 runs in software under valgrind (about 17.8 k instructions of a GET), where the
# hardware uses SHA-NI. Needs valgrind and nginx; installs them when it can.
set -euo pipefail
cd "$(dirname "$0")/../.."
N1=${N1:-500}
N2=${N2:-1500}

. benches/load/common.sh
install_missing valgrind nginx python3 curl
require valgrind nginx python3 curl

build_for_bench profiling mint
BIN=${BIN:-$PWD/target/profiling/account-gate}
MINT=$PWD/target/profiling/examples/mint

scratch
TOKEN=$("$MINT" hs256 "$SECRET" "$MEMBER" "$ACCOUNT" 86400)
UP=$(port)
upstream_nginx_conf "$UP" "$work" "$TOKEN" "$MEMBER" "$ACCOUNT" > "$work/nginx-upstream.conf"
nginx -c "$work/nginx-upstream.conf" -p "$work" & pids+=($!)

# Total instructions of a gateway process that answered `count` requests of `kind`.
total() { # kind count
  local gw gate
  gw=$(port)
  gate_toml "$gw" "$(port)" "http://127.0.0.1:$UP" "[tokens]
unknown = \"reject\"" > "$work/gate.toml"
  valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" \
    "$BIN" run --config "$work/gate.toml" 2>"$work/valgrind.log" &
  gate=$!
  for _ in $(seq 400); do curl -s -o /dev/null "http://127.0.0.1:$gw/" && break; sleep 0.05; done
  python3 - "$gw" "$2" "$1" "$TOKEN" "$ACCOUNT" "$LOGIN" <<'PY'
import http.client, sys
port, count, kind, token, account, login = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
client = http.client.HTTPConnection("127.0.0.1", int(port))
def send(method, path, body=None, headers={}, status=200):
    client.request(method, path, body=body, headers=headers)
    answer = client.getresponse()
    answer.read()
    assert answer.status == status, f"{method} {path}: {answer.status}"
def login_once():
    send("POST", "/v2/account-members/tokens", login,
         {"Content-Type": "application/json", "Authorization": "Bearer bench"}, 201)
login_once()  # the gateway learns the token
for _ in range(count):
    if kind == "get":
        send("GET", f"/v2/accounts/{account}/addresses",
             headers={"EP-Account-Management-Authentication-Token": token})
    else:
        login_once()
PY
  kill -TERM "$gate"
  wait "$gate" || true
  awk '/^summary:|^totals:/ {print $2; exit}' "$work/callgrind.out"
}

echo "$BIN"
for kind in get signup; do
  first=$(total "$kind" "$N1")
  second=$(total "$kind" "$N2")
  echo "$kind: $(( (second - first) / (N2 - N1) )) instructions per request"
done
