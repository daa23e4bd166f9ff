#!/usr/bin/env bash
# Whole-process load benchmark: account-gate against the proxies an operator would use instead,
# in one run on one machine, reported as ratios (this machine is shared; ratios drift far less
# than absolute numbers).
#
#   benches/load/run.sh                 # 3 rounds of 5 s per target, 32 connections
#   ROUNDS=5 DURATION=10 CONNS=64 benches/load/run.sh
#   BASE_BIN=/path/to/older/account-gate benches/load/run.sh   # plus that build's issued-mode
#                                       # GET and sign-up rows, and this build's ratio to it
#   PROXY_CPU=0,1 LOAD_CPU=0,1 benches/load/run.sh   # every proxy on two cores (nginx with two
#                                       # workers, HAProxy two threads, the gateway its default
#                                       # runtime for two), sharing them with wrk and the upstream
#
# One nginx serves a static JSON answer as the upstream. In front of it, each on the SAME single
# core (taskset -c 0): nginx plain proxy_pass (no validation), HAProxy with jwt_verify doing the
# gateway's checks (pinned alg, signature, exp, scope == the account in the path), and
# account-gate (issued mode, HS256 signature mode, RS256 signature mode). wrk and the upstream
# share the other core. Rounds alternate the targets. Everything listens on 127.0.0.1 and every
# wrk run stops by itself after DURATION seconds.
#
# Every proxy runs as shipped, logging a line per request (LOGS=1, the default): the gateway at
# its default level `info` (its access line), nginx with `access_log` in its default format,
# HAProxy with `option httplog` to stderr; each one's stderr is a pipe drained by `cat` on the
# load core. LOGS=0 turns every proxy's request log off (the gateway at `warn`).
#
# Writes benches/results/load.json and benches/results/load.svg; prints the table (req/s, p50,
# p99, and the CPU time each proxy spent per request, in user space and in the kernel) and the
# ratios.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONNS=${CONNS:-32}
BASE_BIN=${BASE_BIN:-}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
LOGS=${LOGS:-1}
# How many cores the proxies and the load get: nginx workers, HAProxy threads, wrk threads.
PROXY_CORES=$(echo "$PROXY_CPU" | tr ',' '\n' | wc -l)
LOAD_CORES=$(echo "$LOAD_CPU" | tr ',' '\n' | wc -l)

. benches/load/common.sh
install_missing nginx haproxy wrk taskset python3 curl
skip_haproxy=0
command -v haproxy >/dev/null 2>&1 || { echo "SKIPPED: haproxy is not installed and could not be; no HAProxy rows"; skip_haproxy=1; }
require nginx wrk python3 curl

build_for_bench release mint
BIN=$PWD/target/release/account-gate
MINT=$PWD/target/release/examples/mint

scratch

HS_TOKEN=$("$MINT" hs256 "$SECRET" "$MEMBER" "$ACCOUNT" 86400)
RS_TOKEN=$("$MINT" rs256 tests/fixtures/keys/rsa-a.key.pem "$MEMBER" "$ACCOUNT" 86400)
printf '%s' "$SECRET" > "$work/hs256.secret"
cp tests/fixtures/keys/rsa-a.pub.pem "$work/rsa.pub.pem"

UP=$(port); NGX=$(port); HA_HS=$(port); HA_RS=$(port)
GW_ISSUED=$(port); GW_HS=$(port); GW_RS=$(port)

upstream_nginx_conf "$UP" "$work" "$HS_TOKEN" "$MEMBER" "$ACCOUNT" > "$work/nginx-upstream.conf"
if [ "$LOGS" = 1 ]; then
  export GATE_LOG_LEVEL=info
  nginx_access="access_log /dev/stderr;"
  haproxy_log="log stderr format raw local0"
else
  export GATE_LOG_LEVEL=warn
  nginx_access="access_log off;"
  haproxy_log=""
fi
nginx_proxy_conf "$NGX" "$UP" "$work" "$PROXY_CORES" "$nginx_access" > "$work/nginx-proxy.conf"
# HAProxy doing what the gateway does in signature mode: one token header, alg pinned, signature,
# exp not past, scope equal to the account id in the path.
haproxy_frontend() { # name port alg key
  cat <<HA
frontend $1
  bind 127.0.0.1:$2
  http-request set-var(txn.tok) req.hdr(EP-Account-Management-Authentication-Token)
  http-request deny deny_status 401 unless { var(txn.tok) -m found }
  http-request deny deny_status 401 unless { var(txn.tok),jwt_header_query('\$.alg') -m str $3 }
  http-request deny deny_status 401 unless { var(txn.tok),jwt_verify("$3","$4") -m int 1 }
  http-request set-var(txn.now) date()
  http-request set-var(txn.exp) var(txn.tok),jwt_payload_query('\$.exp','int')
  http-request deny deny_status 401 if { var(txn.exp),sub(txn.now) -m int lt 0 }
  http-request set-var(txn.scope) var(txn.tok),jwt_payload_query('\$.scope')
  http-request set-var(txn.account) path,field(4,/)
  http-request deny deny_status 403 unless { var(txn.scope),strcmp(txn.account) eq 0 }
  default_backend origin
HA
}
{
  cat <<HA
global
  nbthread $PROXY_CORES
  maxconn 8192
  $haproxy_log
defaults
  mode http
  log global
  option httplog
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
backend origin
  http-reuse always
  server up 127.0.0.1:$UP maxconn 1024
HA
  haproxy_frontend hs "$HA_HS" HS256 "$SECRET"
  haproxy_frontend rs "$HA_RS" RS256 "$work/rsa.pub.pem"
} > "$work/haproxy.cfg"

gate_config() { # name port admin extra
  gate_toml "$2" "$3" "http://127.0.0.1:$UP" "$4" > "$work/$1.toml"
}
# The static upstream checks no token, so the issued-mode gateway must not defer unknown tokens
# to it (unknown = "upstream" trusts the upstream's 2xx): only the tokens it saw issued pass.
gate_config issued "$GW_ISSUED" "$(port)" "[tokens]
unknown = \"reject\""
gate_config hs "$GW_HS" "$(port)" "[tokens]
mode = \"signature\"
[tokens.signature]
algorithms = [\"HS256\"]
hs256_secret_file = \"$work/hs256.secret\""
gate_config rs "$GW_RS" "$(port)" "[tokens]
mode = \"signature\"
[tokens.signature]
algorithms = [\"RS256\"]
public_key_file = \"$work/rsa.pub.pem\""

taskset -c "$LOAD_CPU" nginx -c "$work/nginx-upstream.conf" -p "$work" & pids+=($!)
drained_pipe nginx
taskset -c "$PROXY_CPU" nginx -c "$work/nginx-proxy.conf" -p "$work" 2>"$work/nginx.pipe" & pids+=($!)
nginx_master=$!
[ "$skip_haproxy" = 1 ] || { drained_pipe haproxy; taskset -c "$PROXY_CPU" haproxy -f "$work/haproxy.cfg" -db >/dev/null 2>"$work/haproxy.pipe" & pids+=($!); pid_haproxy=$!; }
for g in issued hs rs; do
  drained_pipe "$g"
  taskset -c "$PROXY_CPU" "$BIN" run --config "$work/$g.toml" 2>"$work/$g.pipe" & pids+=($!)
  eval "pid_$g=$!"
done
if [ -n "$BASE_BIN" ]; then
  GW_BASE=$(port)
  gate_config base "$GW_BASE" "$(port)" "[tokens]
unknown = \"reject\""
  drained_pipe base
  taskset -c "$PROXY_CPU" "$BASE_BIN" run --config "$work/base.toml" 2>"$work/base.pipe" & pids+=($!)
  pid_base=$!
fi

ACC_PATH=/v2/accounts/$ACCOUNT/addresses
ready() { for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.05; done; echo "port $1 never came up"; exit 1; }
for p in $UP $NGX $GW_ISSUED $GW_HS $GW_RS; do ready "$p"; done
[ "$skip_haproxy" = 1 ] || { ready "$HA_HS"; ready "$HA_RS"; }
[ -z "$BASE_BIN" ] || ready "$GW_BASE"

# Teach the issued-mode gateway its token: a login through it.
for p in $GW_ISSUED ${GW_BASE:-}; do
  curl -s -o /dev/null -X POST "http://127.0.0.1:$p/v2/account-members/tokens" \
    -H 'Content-Type: application/json' -H 'Authorization: Bearer bench' -d "$LOGIN"
done

# Each target must accept the good token and refuse a tampered one, or the numbers mean nothing.
check() { # name port token
  local good bad other tampered
  # Change a character inside the signature (the last one may only carry padding bits, which
  # lenient base64 decoders ignore).
  tampered=$(python3 -c 'import sys; t=sys.argv[1]; i=len(t)-10; print(t[:i]+("A" if t[i]!="A" else "B")+t[i+1:])' "$3")
  good=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$2$ACC_PATH" -H "EP-Account-Management-Authentication-Token: $3")
  bad=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$2$ACC_PATH" -H "EP-Account-Management-Authentication-Token: $tampered")
  other=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$2/v2/accounts/someone-else" -H "EP-Account-Management-Authentication-Token: $3")
  echo "check $1: good $good, tampered $bad, other account $other"
  [ "$good" = 200 ] && [ "$bad" = 401 ] && [ "$other" = 403 ] || { echo "$1 does not validate as expected"; exit 1; }
}
check gate-issued "$GW_ISSUED" "$HS_TOKEN"
check gate-hs256 "$GW_HS" "$HS_TOKEN"
check gate-rs256 "$GW_RS" "$RS_TOKEN"
[ -z "$BASE_BIN" ] || check base-issued "$GW_BASE" "$HS_TOKEN"
[ "$skip_haproxy" = 1 ] || { check haproxy-hs256 "$HA_HS" "$HS_TOKEN"; check haproxy-rs256 "$HA_RS" "$RS_TOKEN"; }

login_lua > "$work/login.lua"

# The processes whose CPU time each target costs: nginx's workers (its master only supervises), or
# the HAProxy or gateway process itself; none for the direct target.
pid_nginx=$(pgrep -P "$nginx_master" | paste -sd, -)
# name|url|token|lua|pid
targets=(
  "direct|http://127.0.0.1:$UP$ACC_PATH|||"
  "nginx|http://127.0.0.1:$NGX$ACC_PATH|$HS_TOKEN||$pid_nginx"
  "gate-issued|http://127.0.0.1:$GW_ISSUED$ACC_PATH|$HS_TOKEN||$pid_issued"
  "gate-hs256|http://127.0.0.1:$GW_HS$ACC_PATH|$HS_TOKEN||$pid_hs"
  "gate-rs256|http://127.0.0.1:$GW_RS$ACC_PATH|$RS_TOKEN||$pid_rs"
  "nginx-signup|http://127.0.0.1:$NGX/v2/account-members/tokens||$work/login.lua|$pid_nginx"
  "gate-signup|http://127.0.0.1:$GW_ISSUED/v2/account-members/tokens||$work/login.lua|$pid_issued"
)
[ "$skip_haproxy" = 1 ] || targets+=(
  "haproxy-hs256|http://127.0.0.1:$HA_HS$ACC_PATH|$HS_TOKEN||$pid_haproxy"
  "haproxy-rs256|http://127.0.0.1:$HA_RS$ACC_PATH|$RS_TOKEN||$pid_haproxy"
)
[ -z "$BASE_BIN" ] || targets+=(
  "base-issued|http://127.0.0.1:$GW_BASE$ACC_PATH|$HS_TOKEN||$pid_base"
  "base-signup|http://127.0.0.1:$GW_BASE/v2/account-members/tokens||$work/login.lua|$pid_base"
)
# The user and system CPU time so far of the processes listed (comma-separated), in clock ticks
# (fields 14 and 15 of each one's stat).
ticks() { for p in ${1//,/ }; do cat "/proc/$p/stat"; done | awk '{u += $14; s += $15} END {print u, s}'; }
HZ=$(getconf CLK_TCK)

results=$work/results.tsv
: > "$results"
echo "rounds=$ROUNDS duration=${DURATION}s connections=$CONNS proxies on cpu $PROXY_CPU, wrk+upstream on cpu $LOAD_CPU, request logs $([ "$LOGS" = 1 ] && echo on || echo off)"
for round in $(seq "$ROUNDS"); do
  # Alternate the order each round so no target always runs first or last.
  if [ $((round % 2)) = 0 ]; then order=$(seq $((${#targets[@]} - 1)) -1 0); else order=$(seq 0 $((${#targets[@]} - 1))); fi
  for i in $order; do
    IFS='|' read -r name url token lua pid <<<"${targets[$i]}"
    args=(-t"$LOAD_CORES" -c"$CONNS" -d"${DURATION}s" --latency)
    [ -n "$token" ] && args+=(-H "EP-Account-Management-Authentication-Token: $token")
    [ -n "$lua" ] && args+=(-s "$lua")
    cpu=()
    [ -n "$pid" ] && read -r user0 sys0 < <(ticks "$pid")
    out=$(taskset -c "$LOAD_CPU" wrk "${args[@]}" "$url")
    [ -n "$pid" ] && read -r user1 sys1 < <(ticks "$pid") && cpu=($((user1 - user0)) $((sys1 - sys0)) "$HZ")
    echo "$out" | python3 benches/load/parse_wrk.py "$name" "$round" "${cpu[@]}" >> "$results"
    tail -n1 "$results"
  done
done

rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# Memory and start-up, on a fresh gateway.
MEM_PORT=$(port); MEM_ADMIN=$(port)
gate_config mem "$MEM_PORT" "$MEM_ADMIN" ""
read -r start_ms mem_pid < <(python3 benches/load/startup.py "$BIN" "$work/mem.toml" "$MEM_ADMIN")
pids+=("$mem_pid")
idle_kib=$(rss "$mem_pid")
conns_kib=$(python3 benches/load/idle_conns.py "$MEM_PORT" 1000 "$mem_pid")

python3 benches/load/report.py "$results" "$idle_kib" "$conns_kib" "$start_ms" "$(nproc)" \
  "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
