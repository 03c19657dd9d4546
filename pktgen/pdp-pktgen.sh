#!/usr/bin/env bash
# Kernel pktgen load against a peer-dataplane port, for a real hypervisor host (the pktgen
# module must be loadable: `modprobe pktgen`). Frames leave DEV (the instance side of a
# port, or a NIC cabled to it) addressed to the virtual router, from SRC toward a range of
# destinations and UDP ports in the peer VPC, so that they hit many routes and flows.
#
#   pktgen/pdp-pktgen.sh -i veth-a -m 02:70:64:70:00:01 -s 10.0.2.10 \
#       -d 172.16.0.1 -D 172.16.255.254 -t 4 -n 10000000 [-r 2000000] [-l 64]
#
# Each of the -t threads sends -n frames (0: until stopped), together at most -r pps
# (0: as fast as possible). Read the result with `peer-dataplane stats --watch` on the
# host, and the per-thread summary this script prints from /proc/net/pktgen.
set -euo pipefail

usage() {
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

DEV="" DST_MAC="" SRC="" DST_MIN="" DST_MAX="" THREADS=1 COUNT=1000000 RATE=0 LEN=64
UDP_MIN=1024 UDP_MAX=65000 BURST=32
while getopts "i:m:s:d:D:t:n:r:l:u:U:b:h" o; do
    case "$o" in
    i) DEV=$OPTARG ;;
    m) DST_MAC=$OPTARG ;;
    s) SRC=$OPTARG ;;
    d) DST_MIN=$OPTARG ;;
    D) DST_MAX=$OPTARG ;;
    t) THREADS=$OPTARG ;;
    n) COUNT=$OPTARG ;;
    r) RATE=$OPTARG ;;
    l) LEN=$OPTARG ;;
    u) UDP_MIN=$OPTARG ;;
    U) UDP_MAX=$OPTARG ;;
    b) BURST=$OPTARG ;;
    *) usage ;;
    esac
done
[[ -n $DEV && -n $DST_MAC && -n $SRC && -n $DST_MIN ]] || usage
DST_MAX=${DST_MAX:-$DST_MIN}
[[ $(id -u) == 0 ]] || { echo "pdp-pktgen: needs root" >&2; exit 1; }
[[ -e /sys/class/net/$DEV ]] || { echo "pdp-pktgen: no interface $DEV" >&2; exit 1; }
[[ -d /proc/net/pktgen ]] || modprobe pktgen || {
    echo "pdp-pktgen: the pktgen module is not available on this kernel" >&2
    exit 1
}

pg() { # pg FILE COMMAND: write one pktgen command, failing loudly if pktgen refuses it
    echo "$2" >"/proc/net/pktgen/$1"
    if ! grep -q "Result: OK" "/proc/net/pktgen/$1" 2>/dev/null && [[ $1 != pgctrl ]]; then
        echo "pdp-pktgen: pktgen refused '$2' on $1: $(grep Result: "/proc/net/pktgen/$1")" >&2
        exit 1
    fi
}

cleanup() { echo "stop" >/proc/net/pktgen/pgctrl 2>/dev/null || true; }
trap cleanup EXIT INT TERM

per_thread_rate=0
if ((RATE > 0)); then per_thread_rate=$((RATE / THREADS)); fi
for ((t = 0; t < THREADS; t++)); do
    thread="kpktgend_$t"
    [[ -e /proc/net/pktgen/$thread ]] || { echo "pdp-pktgen: no $thread (fewer CPUs than -t $THREADS?)" >&2; exit 1; }
    pg "$thread" "rem_device_all"
    name="$DEV@$t"
    pg "$thread" "add_device $name"
    pg "$name" "count $COUNT"
    pg "$name" "pkt_size $LEN"
    pg "$name" "burst $BURST"
    pg "$name" "dst_mac $DST_MAC"
    pg "$name" "src_min $SRC"
    pg "$name" "src_max $SRC"
    pg "$name" "dst_min $DST_MIN"
    pg "$name" "dst_max $DST_MAX"
    pg "$name" "udp_src_min $UDP_MIN"
    pg "$name" "udp_src_max $UDP_MAX"
    pg "$name" "udp_dst_min $UDP_MIN"
    pg "$name" "udp_dst_max $UDP_MAX"
    # Random within the ranges: many routes and many flows, not one.
    pg "$name" "flag IPDST_RND"
    pg "$name" "flag UDPSRC_RND"
    pg "$name" "flag UDPDST_RND"
    pg "$name" "flag QUEUE_MAP_CPU"
    if ((per_thread_rate > 0)); then pg "$name" "ratep $per_thread_rate"; fi
done

echo "pdp-pktgen: $THREADS thread(s) on $DEV, $SRC -> $DST_MIN..$DST_MAX, $LEN-byte frames; Ctrl-C stops"
echo "start" >/proc/net/pktgen/pgctrl || true
trap - EXIT
for ((t = 0; t < THREADS; t++)); do
    echo "--- thread $t"
    grep -E "^Result:|pps" "/proc/net/pktgen/$DEV@$t" || true
done
