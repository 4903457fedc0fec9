# Sourced by scripts/loss-netns.sh (link) and scripts/webrtc-rtt.sh: a server and a viewer in
# network namespaces of their own, joined through a router namespace, every link MTU 1500:
#   server S (10.77.0.1) ── veth ── router R ── veth ── viewer V (10.78.0.2)
# `netns_link S R V DELAY_MS NETDELAY LOG` makes the namespaces (the caller deletes them) and,
# for DELAY_MS > 0, starts NETDELAY (surv-netdelay) in R holding every packet DELAY_MS each way,
# its report in LOG; its pid is then in `delay_pid` (stop it with SIGINT for its report). The
# router's link toward the viewer is veth-rv, for a caller's tbf or nftables.
netns_link() {
    local s=$1 r=$2 v=$3 delay_ms=$4 netdelay=$5 log=$6 n dev l
    delay_pid=
    for n in "$s" "$r" "$v"; do
        ip netns add "$n"
        ip -n "$n" link set lo up
    done
    ip link add veth-s netns "$s" type veth peer name veth-rs netns "$r"
    ip link add veth-v netns "$v" type veth peer name veth-rv netns "$r"
    ip -n "$s" addr add 10.77.0.1/24 dev veth-s
    ip -n "$r" addr add 10.77.0.254/24 dev veth-rs
    ip -n "$r" addr add 10.78.0.254/24 dev veth-rv
    ip -n "$v" addr add 10.78.0.2/24 dev veth-v
    for l in "$s veth-s" "$r veth-rs" "$r veth-rv" "$v veth-v"; do
        read -r n dev <<<"$l"
        ip -n "$n" link set "$dev" mtu 1500 up
        # A veth passes a GSO send (a UDP train, a TCP super-segment) or a GRO-merged one to its
        # peer whole, where a real NIC cuts it into wire packets: without this, nft would drop
        # a whole train at once. With offloads off, the stack cuts it before the veth.
        ip netns exec "$n" ethtool -K "$dev" tx-udp-segmentation off tso off gso off gro off >/dev/null
    done
    ip -n "$s" route add 10.78.0.0/24 via 10.77.0.254
    ip -n "$v" route add 10.77.0.0/24 via 10.78.0.254
    ip netns exec "$r" sysctl -qw net.ipv4.ip_forward=1
    if [ "$delay_ms" -gt 0 ]; then
        # Every packet the router gets from either side goes into tun0 (policy routing by input
        # interface); surv-netdelay holds it DELAY_MS and writes it back, and the main table
        # forwards it on. netem cannot load on these kernels.
        ip -n "$r" tuntap add dev tun0 mode tun
        ip -n "$r" link set tun0 mtu 1500 up
        for n in all default tun0 veth-rs veth-rv; do ip netns exec "$r" sysctl -qw "net.ipv4.conf.$n.rp_filter=0"; done
        ip -n "$r" route add default dev tun0 table 100
        ip -n "$r" rule add iif veth-rs lookup 100
        ip -n "$r" rule add iif veth-rv lookup 100
        ip netns exec "$r" "$netdelay" --tun tun0 --delay-ms "$delay_ms" --seconds 7200 >"$log" 2>&1 &
        delay_pid=$!
    fi
}
