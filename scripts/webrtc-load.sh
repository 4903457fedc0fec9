#!/usr/bin/env bash
# A rough WebRTC load on loopback: K aiortc peers (tests/peers/whep_client.py, each decoding
# with FFmpeg) play the test pattern from one surv-server for SECS seconds; prints the server's
# CPU (share of one core, from /proc) and what each peer decoded. The peers run on the same
# 2 cores as the server, so their decoding competes with it.
#   scripts/webrtc-load.sh [K [SECS [WxH]]]      e.g. scripts/webrtc-load.sh 5 20 640x480
# Needs the venv scripts/setup.sh makes. Uses the dev build of surv-server (dependencies such as
# str0m, the crypto and OpenH264 at opt-level 3, surv itself at 1); set SURV_SERVER to another.
set -euo pipefail
cd "$(dirname "$0")/.."
K=${1:-5}
SECS=${2:-20}
SIZE=${3:-640x480}
FPS=30
PY=.venv/bin/python
if [ -z "${SURV_SERVER:-}" ]; then
  cargo build -q -p surv-server
  SURV_SERVER="${CARGO_TARGET_DIR:-target}/debug/surv-server"
fi
dir=$(mktemp -d)
ports=$($PY -c 'import socket
t = socket.socket(); t.bind(("127.0.0.1", 0))
u = socket.socket(type=socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0))
print(t.getsockname()[1], u.getsockname()[1])')
read -r HTTP RTC <<<"$ports"
"$SURV_SERVER" --source test --size "$SIZE" --fps "$FPS" --bind 127.0.0.1 --port 0 \
  --http-port "$HTTP" --rtsp-port 0 --webrtc-port "$RTC" --motion off \
  --log-dir "$dir" 2>"$dir/server.log" &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$HTTP/status" >/dev/null && break
  sleep 0.1
done
ticks() { awk '{print $14 + $15}' "/proc/$server/stat"; }
hz=$(getconf CLK_TCK)
cpu0=$(ticks)
t0=$(date +%s.%N)
peers=()
for i in $(seq "$K"); do
  $PY tests/peers/whep_client.py "http://127.0.0.1:$HTTP/cam/main/whep" \
    --frames $((SECS * FPS)) --timeout $((SECS + 30)) >"$dir/peer-$i.json" 2>"$dir/peer-$i.err" &
  peers+=($!)
done
for p in "${peers[@]}"; do wait "$p" || true; done
cpu1=$(ticks)
t1=$(date +%s.%N)
status=$(curl -sf "http://127.0.0.1:$HTTP/status" || echo '{}')
echo "surv-server: $K WebRTC peers, $SIZE@$FPS test pattern, $SECS s of video each"
awk -v c0="$cpu0" -v c1="$cpu1" -v hz="$hz" -v t0="$t0" -v t1="$t1" 'BEGIN {
  s = t1 - t0; printf "server CPU: %.1f %% of one core over %.1f s (all peers connecting, playing, leaving)\n", (c1 - c0) / hz / s * 100, s }'
for i in $(seq "$K"); do
  echo "peer $i: $(cat "$dir/peer-$i.json")"
done
echo "$status" | $PY -c 'import json, sys
s = json.load(sys.stdin); w = s.get("webrtc", {})
keys = ("sessions", "connected", "packets_sent", "bytes_sent", "send_errors", "keyframe_requests", "nacks")
print("webrtc:", {k: w.get(k) for k in keys})
print("h264 encodes:", [c["h264"]["encodes"] for c in s.get("cameras", [])], "published:", [c["published"] for c in s.get("cameras", [])])'
