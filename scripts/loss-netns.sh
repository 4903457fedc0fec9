#!/usr/bin/env bash
# Loss harness (issue 11; opt-in, needs root for `ip netns`): runs surv-load — a release
# surv-server on the test pattern and N viewers, half seed form, half SURV/1 — inside a private
# network namespace whose loopback drops a random share of UDP datagrams with nftables (frames
# and acks alike: each datagram crosses the input hook once), at 0 %, 20 % and 40 %; then with
# 50 ms ± 25 ms of delay each way (jitter), without loss and with 20 % loss.
# The delay is surv-load's own (`--delay-ms 50 --jitter-ms 25`: the viewers hold each frame and
# each ack that long, since netem cannot load on these kernels); it needs no root and runs
# anywhere, e.g. `target/release/surv-load --viewers 20 --size 640x480 --delay-ms 50 --jitter-ms 25`.
# Prints surv-load's figures per run: worst share of frames per form, longest wait for a frame
# at any viewer (edges of the measured window included), server CPU. Nothing leaves the namespace.
#   sudo scripts/loss-netns.sh [VIEWERS] [SECONDS] [SIZE]      e.g. scripts/loss-netns.sh 20 30 640x480
set -euo pipefail
cd "$(dirname "$0")/.."
viewers=${1:-20}
seconds=${2:-10}
size=${3:-640x480}
command -v nft >/dev/null || { echo "loss-netns: needs nft (apt-get install nftables)" >&2; exit 1; }
cargo build --release -q -p surv-server -p surv-tests
ns="surv-loss-$$"
ip netns add "$ns"
trap 'ip netns del "$ns"' EXIT
ip netns exec "$ns" ip link set lo up
# loss %, one-way delay ms, jitter ms
for run in "0 0 0" "20 0 0" "40 0 0" "0 50 25" "20 50 25"; do
    read -r loss delay_ms jitter_ms <<<"$run"
    ip netns exec "$ns" nft flush ruleset
    if [ "$loss" -gt 0 ]; then
        ip netns exec "$ns" nft add table inet surv
        ip netns exec "$ns" nft add chain inet surv in '{ type filter hook input priority 0; }'
        ip netns exec "$ns" nft add rule inet surv in meta l4proto udp numgen random mod 100 '<' "$loss" drop
    fi
    echo "== random loss ${loss} % on every UDP datagram (frames and acks), delay ${delay_ms} ± ${jitter_ms} ms each way"
    ip netns exec "$ns" target/release/surv-load --viewers "$viewers" --size "$size" --fps 30 \
        --seconds "$seconds" --seed-percent 50 --delay-ms "$delay_ms" --jitter-ms "$jitter_ms"
done
