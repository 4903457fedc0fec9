#!/usr/bin/env bash
# The whole test suite, N times in a row, on a busy machine: a surv-server on the 1280x720 test
# pattern and a surv-client watching it run beside it the whole time (what CI machines and
# people's laptops look like). Stops at the first failing run. Opt-in; about 15 min a run on 2
# cores.
#
#   bash scripts/busy-suite.sh [RUNS]     # default 3
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-3}"
bash scripts/setup.sh
cargo build --release -p surv-server -p surv-client
bin="${CARGO_TARGET_DIR:-target}/release"
logs="$(mktemp -d)"
# Ports of their own, away from the tests' (which take OS-picked ones) and the defaults.
port=19199
http=19180
"$bin/surv-server" --source test --size 1280x720 --fps 30 --bind 127.0.0.1 \
    --port "$port" --http-port "$http" --rtsp-port 19554 --rtsp-udp-port 19000 --webrtc-port 19555 \
    --log-dir "$logs" >"$logs/server.out" 2>&1 &
server=$!
sleep 1
"$bin/surv-client" 127.0.0.1 "$port" 0 --seconds 100000 --headless \
    --record-dir "$logs/recordings" --keep-bytes 500M >"$logs/client.out" 2>&1 &
client=$!
trap 'kill "$client" "$server" 2>/dev/null; wait 2>/dev/null; echo "load logs: $logs"' EXIT
for i in $(seq 1 "$runs"); do
    kill -0 "$server" "$client" || { echo "the 720p server or viewer died: see $logs"; exit 1; }
    started=$(date +%s)
    if cargo test --workspace >"$logs/run-$i.log" 2>&1; then
        tally=$(grep -E '^test result' "$logs/run-$i.log" \
            | awk '{p+=$4; f+=$6; g+=$8} END {print p " passed, " f " failed, " g " ignored"}')
        echo "run $i/$runs: green, $tally, $(( $(date +%s) - started )) s"
    else
        echo "run $i/$runs: RED; the failures:"
        grep -E 'FAILED|panicked' "$logs/run-$i.log" | head -20
        exit 1
    fi
done
