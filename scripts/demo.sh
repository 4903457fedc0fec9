#!/usr/bin/env bash
# surv's main job, with no camera needed: a server on the built-in test pattern and one viewer
# that shows it (headless when there is no display) and records rolling AVI segments.
# Usage: scripts/demo.sh [SECONDS]   (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_RUN="${1:-20}"

bash scripts/setup.sh
cargo build --release -q -p surv-server -p surv-client

PORT=9999
HTTP_PORT="${HTTP_PORT:-8080}"
mkdir -p logs recordings
./target/release/surv-server --source test --size 640x480 --fps 30 --bind 127.0.0.1 --port "$PORT" \
  --http-port "$HTTP_PORT" --log-dir logs &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true' EXIT
# Wait (bounded) until the server listens.
for _ in $(seq 1 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.1
done

echo "While it runs, a browser on this machine shows it too: http://127.0.0.1:$HTTP_PORT/"
./target/release/surv-client 127.0.0.1 "$PORT" 0 --seconds "$SECONDS_TO_RUN" --segment-secs 5 --record-dir recordings

kill -TERM "$SERVER"
wait "$SERVER" || true
trap - EXIT
echo
echo "Recordings: $(pwd)/recordings/"
ls -l recordings/*.avi 2>/dev/null | tail -n 5 || echo "  (none)"
echo "Join/leave log: $(pwd)/logs/"
tail -n 4 logs/surv-journal.*.log 2>/dev/null || echo "  (none)"
