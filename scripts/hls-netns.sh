#!/usr/bin/env bash
# LL-HLS through two nginx edges on hosts of their own (issue 21; opt-in, needs root for
# `ip netns`). Three network namespaces: the origin host (surv-server, and surv-load's players)
# and two edge hosts, each joined to the origin by a veth of MTU 1500 with offloads off, so
# TCP crosses as wire-sized packets, as between real machines. Each edge runs nginx from
# deploy/nginx-edge.conf as shipped, with only its origin, listening address and cache folder
# put in. surv-load plays PLAYERS LL-HLS players, half through each edge (`--via`), and prints
# each player's share of the parts in time, how late they came, and what the origin served per
# part it made; this script adds each edge's CPU over the run. Nothing leaves the namespaces.
#   sudo scripts/hls-netns.sh [PLAYERS] [SECONDS] [SIZE]     e.g. scripts/hls-netns.sh 1000 20 1280x720
# Environment: SURV_PROFILE=dev for the dev build (default: release).
set -euo pipefail
cd "$(dirname "$0")/.."
players=${1:-1000}
seconds=${2:-20}
size=${3:-1280x720}
command -v nginx >/dev/null || { echo "hls-netns: needs nginx (scripts/setup.sh installs it)" >&2; exit 1; }
profile=${SURV_PROFILE:-release}
bin=${CARGO_TARGET_DIR:-target}/$([ "$profile" = dev ] && echo debug || echo "$profile")
cargo build --profile "$profile" -q -p surv-server -p surv-tests --bin surv-server --bin surv-load --bin surv-edge-conf
o="surv-o-$$"
edges=("surv-e1-$$" "surv-e2-$$")
tmp=$(mktemp -d)
port=18080
pids=()
cleanup() {
    set +e
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
    ip netns del "$o" 2>/dev/null
    for e in "${edges[@]}"; do ip netns del "$e" 2>/dev/null; done
    rm -rf "$tmp"
}
trap cleanup EXIT
# origin 10.79.N.1 ── veth (MTU 1500) ── edge N 10.79.N.2
ip netns add "$o"
ip -n "$o" link set lo up
via=()
for i in 1 2; do
    e=${edges[$((i - 1))]}
    ip netns add "$e"
    ip -n "$e" link set lo up
    ip link add "veth-o$i" netns "$o" type veth peer name veth-e netns "$e"
    ip -n "$o" addr add "10.79.$i.1/24" dev "veth-o$i"
    ip -n "$e" addr add "10.79.$i.2/24" dev veth-e
    for l in "$o veth-o$i" "$e veth-e"; do
        read -r n dev <<<"$l"
        ip -n "$n" link set "$dev" mtu 1500 up
        # A veth hands a TSO/GSO send to its peer whole, where a NIC cuts it into wire packets.
        ip netns exec "$n" ethtool -K "$dev" tso off gso off gro off >/dev/null
    done
    d="$tmp/edge$i"
    mkdir -p "$d"
    # The tests' own edge configuration (tests/src/nginx.rs), for this host's addresses.
    "$bin/surv-edge-conf" "$d" "10.79.$i.1:$port" "10.79.$i.2:8081" $((players + 64))
    ip netns exec "$e" nginx -p "$d" -c "$d/nginx.conf" -e "$d/error.log" </dev/null >/dev/null 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do
        ip netns exec "$o" timeout 1 bash -c "exec 3<>/dev/tcp/10.79.$i.2/8081" 2>/dev/null && break
        sleep 0.1
    done
    via+=(--via "http://10.79.$i.2:8081")
done
cpu_s() { awk '{ printf "%.2f", ($14 + $15) / 100 }' "/proc/$1/stat"; }
c0=()
for p in "${pids[@]}"; do c0+=("$(cpu_s "$p")"); done
t0=$(date +%s.%N)
ip netns exec "$o" "$bin/surv-load" --hls "$players" "${via[@]}" --http-port "$port" --server-bind 0.0.0.0 \
    --size "$size" --fps 30 --seconds "$seconds" --server "$bin/surv-server"
t1=$(date +%s.%N)
for i in 1 2; do
    c1=$(cpu_s "${pids[$((i - 1))]}")
    awk -v a="${c0[$((i - 1))]}" -v b="$c1" -v t0="$t0" -v t1="$t1" -v i="$i" \
        'BEGIN { printf "edge %d (nginx, its own host): %.1f %% of a core over the run (%.1f s)\n", i, 100 * (b - a) / (t1 - t0), t1 - t0 }'
    if [ -s "$tmp/edge$i/error.log" ]; then
        echo "edge $i error log:"; tail -5 "$tmp/edge$i/error.log"
    fi
done
