#!/usr/bin/env bash
# WebRTC over UDP against WebRTC over TCP (ICE-TCP) when the server's packets are lost (issue 19;
# opt-in, needs root for nftables): `surv-load --glass` plays the camera page in headless
# Chromium, once as usual (UDP) and once with Chromium sending no UDP (TCP), while nftables
# drops LOSS % of the packets the server's WebRTC port sends on loopback (UDP datagrams; TCP
# segments, which TCP then resends). Prints each mode's glass-to-glass latency and freezes.
#   sudo scripts/webrtc-tcp-loss.sh [LOSS] [SECS] [SIZE]       e.g. scripts/webrtc-tcp-loss.sh 3 30 1280x720
# Environment: SURV_PROFILE=release for the release build (default: dev, as the tests build
# it); PORT (default 18557): the server's WebRTC port, UDP and TCP.
set -euo pipefail
cd "$(dirname "$0")/.."
loss=${1:-3}
secs=${2:-30}
size=${3:-1280x720}
port=${PORT:-18557}
profile=${SURV_PROFILE:-dev}
bin=${CARGO_TARGET_DIR:-target}/$([ "$profile" = dev ] && echo debug || echo "$profile")
cargo build --profile "$profile" -q -p surv-server -p surv-tests --bin surv-server --bin surv-load
table="surv_tcp_loss_$$"
cleanup() { nft delete table inet "$table" 2>/dev/null || true; }
trap cleanup EXIT
nft add table inet "$table"
nft add chain inet "$table" out "{ type filter hook output priority 0; }"
nft add rule inet "$table" out oifname lo udp sport "$port" numgen random mod 100 '<' "$loss" counter drop
nft add rule inet "$table" out oifname lo tcp sport "$port" numgen random mod 100 '<' "$loss" counter drop
echo "dropping $loss % of what port $port sends (UDP and TCP), $secs s per mode, $size"
timeout $((secs * 2 + 300)) "$bin/surv-load" --glass "$secs" --glass-modes webrtc,webrtc-tcp \
    --glass-webrtc-port "$port" --size "$size" --fps 30 --server "$bin/surv-server"
echo "dropped (packets, bytes) by protocol:"
nft list table inet "$table" | grep -o '[a-z]* sport [0-9]* .*counter packets [0-9]* bytes [0-9]*' | sed 's/numgen.*counter//'
