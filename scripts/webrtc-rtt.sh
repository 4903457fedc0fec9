#!/usr/bin/env bash
# The browser at a distance (issue 19; opt-in, needs root for `ip netns`): headless Chromium
# plays the camera page across a round trip, by WebRTC over UDP, by WebRTC over TCP (ICE-TCP:
# Chromium sends no UDP) and by MJPEG, and `surv-load --glass` prints each mode's first frame
# and glass-to-glass latency. Three network namespaces, every link MTU 1500 with offloads off:
#   server (10.77.0.1) ── veth ── router ── veth ── browser (10.78.0.2)
# The router holds every packet DELAY_MS each way (surv-netdelay, through a TUN device; netem
# cannot load on these kernels) and drops LOSS % of what the server sends toward the browser
# (UDP datagrams and TCP segments alike, which TCP then resends). Both ends run on this machine's
# clock, so the latency is glass to glass with the round trip in it. Nothing leaves the
# namespaces.
#   sudo scripts/webrtc-rtt.sh [DELAY_MS] [LOSS] [SECS] [SIZE]   e.g. scripts/webrtc-rtt.sh 50 1 30 1280x720
# Environment: SURV_PROFILE=release for the release build (default: dev, as the tests build
# it); MODES (default "webrtc webrtc-tcp mjpeg"; hls too); KEEP_LOG=FILE keeps the server's log.
set -euo pipefail
cd "$(dirname "$0")/.."
delay_ms=${1:-50}
loss=${2:-0}
secs=${3:-30}
size=${4:-1280x720}
modes=${MODES:-webrtc webrtc-tcp mjpeg}
profile=${SURV_PROFILE:-dev}
bin=${CARGO_TARGET_DIR:-target}/$([ "$profile" = dev ] && echo debug || echo "$profile")
command -v nft >/dev/null || { echo "webrtc-rtt: needs nft (apt-get install nftables)" >&2; exit 1; }
cargo build --profile "$profile" -q -p surv-server -p surv-tests --bin surv-server --bin surv-load \
    --bin surv-netdelay
s="surv-rs-$$" r="surv-rr-$$" v="surv-rv-$$"
tmp=$(mktemp -d)
pids=()
cleanup() {
    set +e
    for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
    [ -f "$tmp/delay.log" ] && cat "$tmp/delay.log" >&2
    for n in "$s" "$r" "$v"; do ip netns del "$n" 2>/dev/null; done
    [ -n "${KEEP_LOG:-}" ] && cp "$tmp/server.log" "$KEEP_LOG"
    rm -rf "$tmp"
}
trap cleanup EXIT
. scripts/netns-link.sh
netns_link "$s" "$r" "$v" "$delay_ms" "$bin/surv-netdelay" "$tmp/delay.log"
[ -n "$delay_pid" ] && pids+=("$delay_pid")
if [ "$loss" != 0 ]; then
    ip netns exec "$r" nft add table inet surv
    ip netns exec "$r" nft add chain inet surv toward '{ type filter hook forward priority 0; }'
    ip netns exec "$r" nft add rule inet surv toward ip saddr 10.77.0.1 oifname veth-rv \
        numgen random mod 1000 '<' "$(awk -v l="$loss" 'BEGIN { printf "%d", l * 10 }')" counter drop
fi
ip netns exec "$s" "$bin/surv-server" --source test --size "$size" --fps 30 --motion off \
    --bind 0.0.0.0 --port 0 --rtsp-port 0 --http-port 18080 --webrtc-port 18555 \
    --webrtc-host 10.77.0.1 --log-dir "$tmp" 2>"$tmp/server.log" &
pids+=($!)
for _ in $(seq 100); do
    ip netns exec "$v" timeout 1 bash -c "exec 3<>/dev/tcp/10.77.0.1/18080" 2>/dev/null && break
    sleep 0.1
done
echo "round trip: $((2 * delay_ms)) ms added; ${loss} % of the server's packets toward the browser dropped; $size@30, $secs s per mode"
ip netns exec "$v" timeout $((secs * 4 + 300)) "$bin/surv-load" --glass "$secs" \
    --glass-modes "$(tr ' ' ',' <<<"$modes")" --glass-origin http://10.77.0.1:18080 --size "$size" --fps 30
if [ "$loss" != 0 ]; then
    ip netns exec "$r" nft list table inet surv | grep -o 'counter packets [0-9]* bytes [0-9]*' | sed 's/^/dropped: /'
fi
