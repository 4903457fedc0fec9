#!/usr/bin/env bash
# Runs the viewer's window tests (client/tests/window.rs) N times in a row, each run from cold:
# fresh X servers (the tests start their own), a fresh HOME (no openbox or fontconfig caches) and,
# when run as root with unshare(1), a private empty /tmp (no /tmp/.X11-unix). The test binary is
# built once. Whatever a run leaves behind (Xvfb, openbox, a viewer) is killed before the next,
# and only that: each run is its own process group.
# Prints one line per run, then passes/N; exits non-zero if any run failed.
# Usage: scripts/window-soak.sh [N]   (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-20}"
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [N]  (N runs, a positive number)" >&2; exit 2; }
RUN_TIMEOUT_SECS=300

BIN=$(cargo test -q -p surv-client --test window --no-run --message-format=json \
  | grep -o '"executable":"[^"]*/window-[^"]*"' | tail -n 1 | cut -d'"' -f4)
[ -x "$BIN" ] || { echo "window-soak: could not build the window test binary" >&2; exit 2; }

PRIVATE_TMP=no
if [ "$(id -u)" -eq 0 ] && unshare -m --propagation private true 2>/dev/null; then
  PRIVATE_TMP=yes
fi
LOGS=$(mktemp -d "${TMPDIR:-/tmp}/window-soak.XXXXXX")
echo "window-soak: $RUNS runs of $BIN (private /tmp: $PRIVATE_TMP; logs in $LOGS)"

set -m # each background job gets its own process group, so its leftovers can be found
passes=0
for run in $(seq 1 "$RUNS"); do
  home=$(mktemp -d "$LOGS/home.XXXXXX")
  log="$LOGS/run-$run.log"
  start_ns=$(date +%s%N)
  if [ "$PRIVATE_TMP" = yes ]; then
    HOME="$home" unshare -m --propagation private sh -c \
      'mount -t tmpfs tmpfs /tmp && exec timeout "$0" "$1"' "$RUN_TIMEOUT_SECS" "$BIN" >"$log" 2>&1 &
  else
    HOME="$home" timeout "$RUN_TIMEOUT_SECS" "$BIN" >"$log" 2>&1 &
  fi
  group=$!
  status=0
  wait "$group" || status=$?
  ms=$((($(date +%s%N) - start_ns) / 1000000))
  secs="$((ms / 1000)).$((ms % 1000 / 100))"
  strays=$(pgrep -g "$group" -l || true)
  if [ -n "$strays" ]; then
    echo "  run $run left behind: $(echo "$strays" | tr '\n' ' ')"
    kill -KILL -- "-$group" 2>/dev/null || true
  fi
  rm -rf "$home"
  if [ "$status" -eq 0 ]; then
    passes=$((passes + 1))
    printf 'run %d/%d: ok (%s s)\n' "$run" "$RUNS" "$secs"
  else
    printf 'run %d/%d: FAILED (exit %d, %s s, log %s)\n' "$run" "$RUNS" "$status" "$secs" "$log"
    grep -E -A3 "^test .* FAILED|panicked at" "$log" | sed 's/^/    /' || true
  fi
done
echo "$passes/$RUNS"
[ "$passes" -eq "$RUNS" ]
