#!/usr/bin/env bash
# WebRTC through Janus, on this host: one surv-server forwards its camera (the test pattern)
# to two Janus edges started from deploy/janus/ (free ports, config in a temp folder, no
# daemon); K viewers watch, half on each edge, for SECS seconds: with CLIENT=str0m (the
# default) `surv-load --janus K`, a str0m peer per viewer counting the H.264 frames it
# receives whole (no decoding); with CLIENT=aiortc tests/peers/janus_client.py, each viewer
# decoding every frame with FFmpeg in Python (two processes: about 40 viewers is what this
# 2-core machine decodes beside the rest). Prints surv's CPU over SECS with 0 viewers, then over
# SECS with the K watching (share of one core, /proc/PID/stat), each edge's CPU, what every
# viewer decoded (its share of the frames the stream carried while it watched), and surv's
# forward counters. The viewers share the machine's cores with surv and Janus.
#   [CLIENT=str0m|aiortc] scripts/janus-load.sh [K [SECS [WxH]]]   e.g. scripts/janus-load.sh 10 10 640x480
# Needs janus and the venv (scripts/setup.sh). Uses the dev build of surv-server, as
# scripts/webrtc-load.sh does, built as the tests build it (`cargo test --workspace --no-run`:
# `cargo build -p surv-server` alone unifies other features and compiles the dependencies
# again); set SURV_SERVER (and SURV_LOAD) to others.
set -euo pipefail
cd "$(dirname "$0")/.."
K=${1:-10}
SECS=${2:-10}
SIZE=${3:-640x480}
FPS=30
CLIENT=${CLIENT:-str0m}
case "$CLIENT" in str0m | aiortc) ;; *) echo "CLIENT is str0m or aiortc" >&2; exit 2 ;; esac
PY=.venv/bin/python
if [ -z "${SURV_SERVER:-}" ] || { [ "$CLIENT" = str0m ] && [ -z "${SURV_LOAD:-}" ]; }; then
  cargo test -q --workspace --no-run
fi
SURV_SERVER=${SURV_SERVER:-${CARGO_TARGET_DIR:-target}/debug/surv-server}
SURV_LOAD=${SURV_LOAD:-${CARGO_TARGET_DIR:-target}/debug/surv-load}
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

# Free ports: surv's HTTP, and per edge its HTTP and an even RTP port with RTCP on the next.
read -r HTTP J1 R1 J2 R2 <<<"$($PY -c 'import socket
def tcp():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); return s
def even():
    while True:
        a = socket.socket(type=socket.SOCK_DGRAM); a.bind(("0.0.0.0", 0))
        p = a.getsockname()[1]
        if p % 2 == 0:
            try:
                b = socket.socket(type=socket.SOCK_DGRAM); b.bind(("0.0.0.0", p + 1))
                return a, b
            except OSError:
                pass
keep = [tcp(), tcp(), even(), tcp(), even()]
print(keep[0].getsockname()[1], keep[1].getsockname()[1], keep[2][0].getsockname()[1],
      keep[3].getsockname()[1], keep[4][0].getsockname()[1])')"

edge() { # edge NAME HTTP_PORT RTP_PORT
  local d="$dir/$1"
  mkdir -p "$d"
  sed "s#/etc/surv-janus#$d#" deploy/janus/janus.jcfg >"$d/janus.jcfg"
  sed "s/port = 8088/port = $2/" deploy/janus/janus.transport.http.jcfg >"$d/janus.transport.http.jcfg"
  sed "s/port = 5004/port = $3/; s/rtcpport = 5005/rtcpport = $(($3 + 1))/" \
    deploy/janus/janus.plugin.streaming.jcfg >"$d/janus.plugin.streaming.jcfg"
  janus -F "$d" -C "$d/janus.jcfg" -o -L "$d/janus.log" >/dev/null 2>&1 &
  pids+=($!)
  eval "$1=$!"
  for _ in $(seq 150); do
    curl -sf "http://127.0.0.1:$2/janus/info" >/dev/null && return 0
    sleep 0.1
  done
  echo "janus $1 did not start: $d/janus.log" >&2
  exit 1
}
edge edge1 "$J1" "$R1"
edge edge2 "$J2" "$R2"

"$SURV_SERVER" --source test --size "$SIZE" --fps "$FPS" --bind 127.0.0.1 --port 0 \
  --http-port "$HTTP" --rtsp-port 0 --webrtc-port 0 --motion off \
  --forward "rtp://127.0.0.1:$R1" --forward "rtp://127.0.0.1:$R2" \
  --log-dir "$dir" 2>"$dir/server.log" &
server=$!
pids+=("$server")
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$HTTP/healthz" >/dev/null && break
  sleep 0.1
done
hz=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# cpu PID SECONDS: its share of one core over that many seconds, from now.
window() { # window SECONDS -> "surv edge1 edge2" CPU % over it
  local s0 a0 b0 t0 s1 a1 b1 t1
  s0=$(ticks "$server"); a0=$(ticks "$edge1"); b0=$(ticks "$edge2"); t0=$(date +%s.%N)
  sleep "$1"
  s1=$(ticks "$server"); a1=$(ticks "$edge1"); b1=$(ticks "$edge2"); t1=$(date +%s.%N)
  awk -v s0="$s0" -v s1="$s1" -v a0="$a0" -v a1="$a1" -v b0="$b0" -v b1="$b1" \
    -v t0="$t0" -v t1="$t1" -v hz="$hz" 'BEGIN { t = t1 - t0;
    printf "surv %.1f %%, janus-1 %.1f %%, janus-2 %.1f %% of one core over %.1f s\n",
      (s1 - s0) / hz / t * 100, (a1 - a0) / hz / t * 100, (b1 - b0) / hz / t * 100, t }'
}
sleep 2 # the encoder and both forwards running
echo "surv-server $SIZE@$FPS test pattern, --forward to 2 Janus edges; $K viewers, $SECS s each"
echo "0 viewers: $(window "$SECS")"
if [ "$CLIENT" = str0m ]; then
  # surv-load joins the K viewers (15 ms apart), waits until every one plays, 3 s more, then
  # measures SECS s: surv's and Janus's CPU are taken over the same window.
  "$SURV_LOAD" --janus "$K" --janus-api "http://127.0.0.1:$J1/janus" \
    --janus-api "http://127.0.0.1:$J2/janus" --fps "$FPS" --seconds "$SECS" \
    >"$dir/viewers.txt" 2>"$dir/viewers.err" &
  load=$!
  pids+=("$load")
  for _ in $(seq $((K / 10 + 600))); do
    grep -q 'measuring for' "$dir/viewers.err" 2>/dev/null && break
    kill -0 "$load" 2>/dev/null || break
    sleep 0.1
  done
  if grep -q 'measuring for' "$dir/viewers.err"; then
    echo "$K viewers: $(window "$SECS")"
  else
    echo "the viewers never started measuring: $dir/viewers.err" >&2
  fi
  wait "$load" || true
  sed 's/^/  /' "$dir/viewers.txt" "$dir/viewers.err"
else
# K viewers, half on each edge; each joins within RAMP s and decodes SECS + 6 s after its
# first frame, so the measuring window (from RAMP + 3 s on) lies inside every viewer's watch.
RAMP=$((K / 5 + 2))
h1=$(((K + 1) / 2)); h2=$((K / 2))
client() { # client HTTP_PORT N OUT
  $PY tests/peers/janus_client.py "http://127.0.0.1:$1/janus" --peers "$2" \
    --seconds $((SECS + 6)) --fps "$FPS" --ramp "$RAMP" --timeout $((SECS + RAMP + 40)) \
    >"$3" 2>"$3.err" &
  pids+=($!)
}
client "$J1" "$h1" "$dir/edge1.json"
c1=$!
c2=""
if [ "$h2" -gt 0 ]; then client "$J2" "$h2" "$dir/edge2.json"; c2=$!; fi
sleep $((RAMP + 3))
echo "$K viewers: $(window "$SECS")"
wait "$c1" || true
if [ -n "$c2" ]; then wait "$c2" || true; fi
for e in edge1 edge2; do
  [ -f "$dir/$e.json" ] || continue
  echo "$e viewers:"
  sed 's/^/  /' "$dir/$e.json"
done
fi
curl -sf "http://127.0.0.1:$HTTP/status" | $PY -c 'import json, sys
s = json.load(sys.stdin); c = s["cameras"][0]
print("h264 encodes:", c["h264"]["encodes"], "published:", c["published"])
for f in c.get("forwards", []):
    print("forward", f["destination"], {k: f[k] for k in ("frames", "packets", "bytes", "frames_skipped", "send_errors")})'
echo "(logs and outputs in $dir)"
