#!/usr/bin/env bash
# The slow WebRTC viewer (issue 19; opt-in, needs root for `ip netns`): one viewer behind a
# `tbf` of RATE while VIEWERS others are not limited, for SECS seconds; the limit is lifted
# LIFT seconds into the measurement, to see whether the slow one recovers.
# Two network namespaces: the server's host (surv-server on its 1280x720@30 test pattern, and
# the unlimited viewers: `surv-load --webrtc N --whep-url …`) and the slow viewer's host, joined
# by a veth of MTU 1500 with offloads off; the tbf sits on the server's side of it, toward the
# viewer. Every viewer is a str0m peer; each prints per 10 s the frames it got, capture →
# arrival latency (from the server's sender reports) and its bit rate; the script prints how
# long after the lift the slow one is sent every frame again. Nothing leaves the namespaces.
#   sudo scripts/webrtc-tbf.sh [VIEWERS] [SECS] [RATE] [LIFT]     e.g. scripts/webrtc-tbf.sh 10 60 1mbit 40
# Environment: SURV_PROFILE=release for the release build (default: dev, as the tests build
# it); TBF_LATENCY (default 200ms): how long the tbf queues before it drops; SIZE (1280x720);
# KEEP_LOG=FILE keeps the server's log (RUST_LOG passes through); SURV_SERVER=PATH runs that
# surv-server binary instead of the one built (to compare two builds).
set -euo pipefail
cd "$(dirname "$0")/.."
viewers=${1:-10}
secs=${2:-60}
rate=${3:-1mbit}
lift=${4:-40}
size=${SIZE:-1280x720}
profile=${SURV_PROFILE:-dev}
bin=${CARGO_TARGET_DIR:-target}/$([ "$profile" = dev ] && echo debug || echo "$profile")
cargo build --profile "$profile" -q -p surv-server -p surv-tests --bin surv-server --bin surv-load
s="surv-ws-$$"
v="surv-wv-$$"
tmp=$(mktemp -d)
pids=()
cleanup() {
    set +e
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
    ip netns del "$s" 2>/dev/null
    ip netns del "$v" 2>/dev/null
    [ -n "${KEEP_LOG:-}" ] && cp "$tmp/server.log" "$KEEP_LOG"
    rm -rf "$tmp"
}
trap cleanup EXIT
ip netns add "$s"
ip netns add "$v"
for n in "$s" "$v"; do ip -n "$n" link set lo up; done
ip link add veth-s netns "$s" type veth peer name veth-v netns "$v"
ip -n "$s" addr add 10.80.1.1/24 dev veth-s
ip -n "$v" addr add 10.80.1.2/24 dev veth-v
for l in "$s veth-s" "$v veth-v"; do
    read -r n dev <<<"$l"
    ip -n "$n" link set "$dev" mtu 1500 up
    ip netns exec "$n" ethtool -K "$dev" tso off gso off gro off >/dev/null
done
ip netns exec "$s" tc qdisc add dev veth-s root tbf rate "$rate" burst 16kb latency "${TBF_LATENCY:-200ms}"
ip netns exec "$s" "${SURV_SERVER:-$bin/surv-server}" --source test --size "$size" --fps 30 --motion off \
    --bind 0.0.0.0 --port 0 --rtsp-port 0 --http-port 18080 --webrtc-port 18555 \
    --webrtc-host 10.80.1.1 --log-dir "$tmp" 2>"$tmp/server.log" &
pids+=($!)
for _ in $(seq 100); do
    ip netns exec "$s" timeout 1 bash -c "exec 3<>/dev/tcp/10.80.1.1/18080" 2>/dev/null && break
    sleep 0.1
done
url=http://10.80.1.1:18080/cam/main/whep
echo "server $size@30 test pattern; $viewers viewers unlimited, 1 behind tbf $rate (latency ${TBF_LATENCY:-200ms}), lifted at ${lift} s of ${secs} s"
ip netns exec "$s" "$bin/surv-load" --webrtc "$viewers" --whep-url "$url" --warmup-secs 2 \
    --seconds "$secs" >"$tmp/fast.txt" 2>"$tmp/fast.err" &
fast=$!
pids+=("$fast")
ip netns exec "$v" "$bin/surv-load" --webrtc 1 --whep-url "$url" --warmup-secs 2 \
    --seconds "$secs" >"$tmp/slow.txt" 2>"$tmp/slow.err" &
slow=$!
pids+=("$slow")
for _ in $(seq 600); do
    grep -q 'measuring for' "$tmp/slow.err" 2>/dev/null && break
    kill -0 "$slow" 2>/dev/null || break
    sleep 0.1
done
# The slow peer in the server's /status: its level alone (`slow_peer level`), or its report.
slow_peer() {
    ip netns exec "$s" curl -s --max-time 5 http://10.80.1.1:18080/status | python3 -c 'import json, sys
for p in (json.load(sys.stdin).get("webrtc") or {}).get("peers", []):
    if p["address"].startswith("10.80.1.2"):
        if sys.argv[1:] == ["level"]:
            print(p.get("level"))
        else:
            print("the slow peer, as the server sees it:", {k: p.get(k) for k in ("level", "estimate_bps", "bitrate_bps", "frames_thinned", "frames_late", "loss", "rtt_ms", "nacks")})' "$@" 2>/dev/null || true
}
sleep "$lift"
slow_peer
ip netns exec "$s" tc -s qdisc show dev veth-s | sed 's/^/tbf before lifting: /'
ip netns exec "$s" tc qdisc del dev veth-s root
lifted=$(date +%s.%N)
echo "limit lifted at ${lift} s"
since_lift() { awk -v now="$(date +%s.%N)" -v t="$lifted" 'BEGIN { printf "%.1f", now - t }'; }
# How long the slow peer takes to be sent every frame again (its level, twice a second until
# the measurement ends); its whole report 5 s after the lift.
recovered= shown=
for _ in $(seq $((2 * (secs - lift)))); do
    if [ -z "$recovered" ] && [ "$(slow_peer level)" = all ]; then
        recovered=$(since_lift)
        echo "the slow peer is sent every frame again $recovered s after the lift"
    fi
    if [ -z "$shown" ] && awk -v e="$(since_lift)" 'BEGIN { exit !(e >= 5) }'; then
        slow_peer
        shown=1
    fi
    [ -n "$recovered" ] && [ -n "$shown" ] && break
    sleep 0.5
done
[ -n "$recovered" ] || echo "the slow peer was not sent every frame again within $((secs - lift)) s of the lift"
wait "$slow" || true
wait "$fast" || true
echo "== the viewer behind the tbf"
cat "$tmp/slow.txt" "$tmp/slow.err"
echo "== the unlimited viewers"
cat "$tmp/fast.txt" "$tmp/fast.err"
ip netns exec "$s" curl -s --max-time 5 http://10.80.1.1:18080/status | python3 -c 'import json, sys
s = json.load(sys.stdin); c = s["cameras"][0]; h = c.get("h264", {})
print("camera:", "published", c["published"], "h264 encodes", h.get("encodes"), "keyframes forced", h.get("keyframes_forced"))
w = s.get("webrtc") or {}
print("webrtc:", {k: w[k] for k in w if not isinstance(w[k], (list, dict))})' || true
