#!/usr/bin/env bash
# What one more --forward destination (one more edge) costs the origin: surv-server on the
# test pattern with N forwards to UDP sockets of this host that take the packets (a Python
# process that never reads them; the kernel drops what overflows), for each N given; prints
# surv's CPU (share of one core over SECS, /proc/PID/stat) and its forward counters.
#   scripts/forward-cost.sh SECS WxH N...      e.g. scripts/forward-cost.sh 10 640x480 1 2 8 32
# Uses the dev build as scripts/janus-load.sh does; set SURV_SERVER to another.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
SIZE=${2:-640x480}
shift 2 || true
COUNTS=("${@:-1 2 8 32}")
FPS=30
PY=.venv/bin/python
if [ -z "${SURV_SERVER:-}" ]; then
  cargo test -q --workspace --no-run
  SURV_SERVER="${CARGO_TARGET_DIR:-target}/debug/surv-server"
fi
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
hz=$(getconf CLK_TCK)
for n in ${COUNTS[*]}; do
  # n sinks: even ports, bound (and their RTCP port) until this run ends.
  $PY -c 'import socket, sys, time
n = int(sys.argv[1]); keep = []; ports = []
while len(ports) < n:
    a = socket.socket(type=socket.SOCK_DGRAM); a.bind(("127.0.0.1", 0)); p = a.getsockname()[1]
    if p % 2:
        continue
    try:
        b = socket.socket(type=socket.SOCK_DGRAM); b.bind(("127.0.0.1", p + 1))
    except OSError:
        continue
    keep += [a, b]; ports.append(p)
t = socket.socket(); t.bind(("127.0.0.1", 0)); port = t.getsockname()[1]; t.close()
print(port, *ports, flush=True)
time.sleep(3600)' "$n" >"$dir/sinks-$n" &
  sinks=$!
  pids+=("$sinks")
  for _ in $(seq 100); do [ -s "$dir/sinks-$n" ] && break; sleep 0.05; done
  read -r HTTP rest <"$dir/sinks-$n"
  args=()
  for p in $rest; do args+=(--forward "rtp://127.0.0.1:$p"); done
  "$SURV_SERVER" --source test --size "$SIZE" --fps "$FPS" --bind 127.0.0.1 --port 0 \
    --http-port "$HTTP" --rtsp-port 0 --webrtc-port 0 --motion off "${args[@]}" \
    --log-dir "$dir" 2>"$dir/server-$n.log" &
  server=$!
  pids+=("$server")
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$HTTP/healthz" >/dev/null && break
    sleep 0.1
  done
  sleep 2
  c0=$(awk '{print $14 + $15}' "/proc/$server/stat"); t0=$(date +%s.%N)
  sleep "$SECS"
  c1=$(awk '{print $14 + $15}' "/proc/$server/stat"); t1=$(date +%s.%N)
  stats=$(curl -sf "http://127.0.0.1:$HTTP/status" | $PY -c 'import json, sys
c = json.load(sys.stdin)["cameras"][0]; f = c.get("forwards", [])
print("encodes", c["h264"]["encodes"], "published", c["published"], "forward frames min",
      min(x["frames"] for x in f), "skipped", sum(x["frames_skipped"] for x in f),
      "send errors", sum(x["send_errors"] for x in f))')
  awk -v n="$n" -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v hz="$hz" -v size="$SIZE" \
    -v s="$stats" 'BEGIN { printf "%s, %d forward(s): surv %.1f %% of one core over %.1f s; %s\n",
      size, n, (c1 - c0) / hz / (t1 - t0) * 100, t1 - t0, s }'
  kill "$server" "$sinks"; wait "$server" 2>/dev/null || true; wait "$sinks" 2>/dev/null || true
done
