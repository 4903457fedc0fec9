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
#
# Link mode (issue 20): `sudo scripts/loss-netns.sh link [SECONDS] [SIZES] [LOSSES] [EACH_WAY]`
# measures a real link instead of loopback: the server in one namespace, surv-client in another,
# a router namespace between them, every link a veth with MTU 1500 (so a whole frame datagram
# crosses as IP fragments), and nftables dropping LOSS % of IP packets at prerouting priority
# -500 (before reassembly, which is at -400: a whole-datagram frame is lost with any of its
# fragments, as on a real link) on the viewer's side (EACH_WAY=1: on the server's side too, so
# acks and nacks are lost as well).
# Each condition runs surv-client for SECONDS, whole datagrams (--mtu 0), chunks repaired by
# nack alone (--mtu 1200 --fec false) and chunks with parity too (--mtu 1200, surv-client's
# default) (MODES="chunks fec": only those), and prints one table row: the share of the frames the server
# captured (fps × seconds) that the viewer received whole, the viewer's p50/p99 latency, its
# longest wait for a frame, its summary (with latency p99 per 10 s window), and what the viewer
# host's IP reassembly did meanwhile (datagrams reassembled, failed, timed out).
# Environment:
#   DELAY_MS=20         each way, on every packet (TCP too): surv-netdelay in the router, through
#                       a TUN device (netem cannot load on these kernels). Default 0.
#   RATE=4mbit          a tbf bottleneck on the router's link toward the viewer, its buffer
#                       TBF_LATENCY (default 200ms; tail drop past it) and its bucket TBF_BURST
#                       (default 32kb; 3kb is a link that sends at its rate from the first packet,
#                       as a router's uplink port does: a burst beyond the buffer is cut).
#   SERVER_ARGS="--pace false"  more surv-server options (word-split), e.g. to compare.
#   SURV_PROFILE=dev    the dev build (dependencies optimised; enough for loss figures, not CPU).
#   e.g. sudo DELAY_MS=20 scripts/loss-netns.sh link 10 "1280x720 1920x1080" "0 1 3 10"
#        sudo DELAY_MS=20 RATE=4mbit MODES=chunks scripts/loss-netns.sh link 60 1920x1080 0
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "link" ]]; then
    seconds=${2:-10}
    sizes=${3:-640x480 1280x720}
    losses=${4:-0 1 3 10}
    each_way=${5:-0}
    delay_ms=${DELAY_MS:-0}
    rate=${RATE:-}
    tbf_latency=${TBF_LATENCY:-200ms}
    tbf_burst=${TBF_BURST:-32kb}
    fps=30
    command -v nft >/dev/null || { echo "loss-netns: needs nft (apt-get install nftables)" >&2; exit 1; }
    profile=${SURV_PROFILE:-release}
    bin=${CARGO_TARGET_DIR:-target}/$([ "$profile" = dev ] && echo debug || echo "$profile")
    cargo build --profile "$profile" -q -p surv-server -p surv-client -p surv-tests --bin surv-server \
        --bin surv-client --bin surv-netdelay
    s="surv-s-$$" r="surv-r-$$" v="surv-v-$$"
    logs=$(mktemp -d)
    server_pid= delay_pid=
    cleanup() {
        set +e
        [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
        [ -n "$delay_pid" ] && kill -INT "$delay_pid" 2>/dev/null && wait "$delay_pid" 2>/dev/null
        [ -f "$logs/delay.log" ] && cat "$logs/delay.log" >&2
        ip netns del "$s" 2>/dev/null
        ip netns del "$r" 2>/dev/null
        ip netns del "$v" 2>/dev/null
        [ -n "${KEEP_LOGS:-}" ] && cp -r "$logs/." "$KEEP_LOGS/"
        rm -rf "$logs"
    }
    trap cleanup EXIT
    # server (10.77.0.1) ── veth ── router ── veth ── viewer (10.78.0.2), every link MTU 1500.
    . scripts/netns-link.sh
    netns_link "$s" "$r" "$v" "$delay_ms" "$bin/surv-netdelay" "$logs/delay.log"
    if [ -n "$rate" ]; then
        # The bottleneck: the router's link toward the viewer carries RATE, with a buffer of
        # TBF_LATENCY (tail drop past it), as a slow uplink does.
        ip netns exec "$r" tc qdisc add dev veth-rv root tbf rate "$rate" burst "$tbf_burst" latency "$tbf_latency"
    fi
    echo "round trip: $((2 * delay_ms)) ms added; bottleneck toward the viewer: ${rate:-none}${rate:+ (buffer $tbf_latency, bucket $tbf_burst)}"
    # The viewer's kernel's IP reassembly so far: datagrams reassembled, failures (a fragment
    # dropped for want of reassembly memory counts here), and those timed out (ipfrag_time).
    reasm() {
        ip netns exec "$1" awk '$1 == "Ip:" && !h { for (i = 2; i <= NF; i++) col[$i] = i; h = 1; next }
            $1 == "Ip:" { print $col["ReasmOKs"], $col["ReasmFails"], $col["ReasmTimeout"] }' /proc/net/snmp
    }
    drop() { # namespace, per mille
        ip netns exec "$1" nft flush ruleset
        [ "$2" -gt 0 ] || return 0
        ip netns exec "$1" nft add table inet surv
        ip netns exec "$1" nft add chain inet surv pre '{ type filter hook prerouting priority -500; }'
        ip netns exec "$1" nft add rule inet surv pre ip protocol udp numgen random mod 1000 '<' "$2" drop
    }
    echo "| picture | packet loss ($([ "$each_way" = 1 ] && echo each way || echo viewer side)) | mode | frames received | latency p50 / p99 ms | longest gap ms | client summary |"
    echo "|---|---|---|---|---|---|---|"
    for size in $sizes; do
        ip netns exec "$s" "$bin/surv-server" --source test --bind 10.77.0.1 --size "$size" --fps "$fps" \
            --http-port 0 --motion off --log-dir "$logs" ${SERVER_ARGS:-} >"$logs/server.log" 2>&1 &
        server_pid=$!
        for _ in $(seq 50); do
            ip netns exec "$v" timeout 2 bash -c 'exec 3<>/dev/tcp/10.77.0.1/9999' 2>/dev/null && break
            sleep 0.1
        done
        for loss in $losses; do
            permille=$(awk -v l="$loss" 'BEGIN { printf "%d", l * 10 }')
            drop "$v" "$permille"
            [ "$each_way" = 1 ] && drop "$s" "$permille"
            for mode in ${MODES:-whole chunks fec}; do
                mtu=$([ "$mode" = whole ] && echo 0 || echo 1200)
                fec=$([ "$mode" = fec ] && echo true || echo false)
                # A whole datagram that lost a fragment leaves its other fragments queued for
                # reassembly for 30 s (ipfrag_time), and past 4 MB of them (ipfrag_high_thresh)
                # the kernel drops every new fragment: wait until the last condition's are gone,
                # so that each starts as a fresh viewer would (within a run they pile up, as on
                # a real lossy link).
                for _ in $(seq 35); do
                    ip netns exec "$v" awk '$1 == "FRAG:" && $5 == 0 { ok = 1 } END { exit !ok }' /proc/net/sockstat && break
                    sleep 1
                done
                reasm0=$(reasm "$v")
                out=$(ip netns exec "$v" timeout $((seconds + 20)) "$bin/surv-client" 10.77.0.1 9999 0 \
                    --headless --no-record --seconds "$seconds" --mtu "$mtu" --fec "$fec" 2>&1 | grep 'frames received=' || true)
                got=$(sed -n 's/.*frames received=\([0-9]*\).*/\1/p' <<<"$out")
                lat=$(sed -n 's/.*latency_ms p50=\([^ ]*\) p99=\([^ ]*\).*/\1 \/ \2/p' <<<"$out")
                pct=$(awk -v g="${got:-0}" -v n=$((fps * seconds)) 'BEGIN { printf "%.1f %%", 100 * g / n }')
                gap=$(sed -n 's/.*longest_gap_ms=\([0-9]*\).*/\1/p' <<<"$out")
                read -r ok0 failed0 timeout0 <<<"$reasm0"
                read -r ok1 failed1 timeout1 <<<"$(reasm "$v")"
                echo "| ${size}@${fps} | ${loss} % | ${mode} | ${pct} (${got:-0} of $((fps * seconds))) | ${lat:-n/a} | ${gap:-n/a} | ${out#*s, } reassembled=$((ok1 - ok0)) reassembly_failed=$((failed1 - failed0)) timed_out=$((timeout1 - timeout0)) |"
            done
        done
        drop "$v" 0
        drop "$s" 0
        kill "$server_pid"
        wait "$server_pid" 2>/dev/null || true
        server_pid=
    done
    exit 0
fi
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
    release=${CARGO_TARGET_DIR:-target}/release
    ip netns exec "$ns" "$release/surv-load" --server "$release/surv-server" --viewers "$viewers" \
        --size "$size" --fps 30 --seconds "$seconds" --seed-percent 50 \
        --delay-ms "$delay_ms" --jitter-ms "$jitter_ms"
done
