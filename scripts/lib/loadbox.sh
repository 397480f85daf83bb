# Sourced by the load scripts (c1m, capacity, bench, scale). A run's
# lifetime: `loadbox_begin TAG [sysctls]` arms an exit trap that kills every
# pid in `pids` and restores the sysctls, which with `sysctls` it first
# applies (the ones a loopback run with up to a few million sockets needs,
# printed as they change). `loadbox_netns` moves the run into a network
# namespace of its own, deleted at exit. And how kernel memory is read.
pids=()
loadbox_ns=""
loadbox_begin() {
  loadbox_tag=$1
  trap loadbox_end EXIT
  if [ "${2:-}" = sysctls ]; then load_sysctls_apply "$1"; fi
}
loadbox_end() {
  local p
  # A server a killed load generator left stopped (ringbeat-load
  # --hold-server) would keep a TERM pending, and the wait below forever.
  for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "$loadbox_ns" ]; then ip netns del "$loadbox_ns" 2>/dev/null || true; fi
  load_sysctls_restore "$loadbox_tag"
}

# `loadbox_netns ENTRIES`: creates a network namespace whose TCP
# established-connection hash has ENTRIES buckets (kernel 6.1+; the host's
# is sized at boot, 262,144 on this 24 GiB box, so a million loopback pairs
# chain 8 sockets per bucket), brings its loopback up and applies the
# per-namespace sysctls inside it. Run commands there with `$loadbox_in`.
# Returns 1 (and leaves the run where it was) where that cannot be done.
loadbox_netns() {
  local k
  [ -e /proc/sys/net/ipv4/tcp_child_ehash_entries ] || return 1
  command -v ip >/dev/null || return 1
  load_sysctl_set "$loadbox_tag" net.ipv4.tcp_child_ehash_entries "$1" || return 1
  loadbox_ns="$loadbox_tag-$$"
  ip netns add "$loadbox_ns" || { loadbox_ns=""; return 1; }
  # Called as `loadbox_netns … || fallback`, where set -e does not act:
  # each step checks itself, and the namespace is used only if all worked.
  ip netns exec "$loadbox_ns" ip link set lo up || return 1
  for k in net.ipv4.ip_local_port_range net.core.somaxconn net.ipv4.tcp_max_syn_backlog; do
    ip netns exec "$loadbox_ns" sysctl -qw "$k=${load_sysctls_want[$k]}" || return 1
  done
  loadbox_in=(ip netns exec "$loadbox_ns")
  echo "$loadbox_tag: network namespace $loadbox_ns, established hash $(ip netns exec "$loadbox_ns" sysctl -n net.ipv4.tcp_ehash_entries) buckets"
}
loadbox_in=()

# `loadbox_place PIN VETH`: where the server and the load generator run.
# PIN=1 (and 2+ cores): the server on the first half of the cores, the load
# generator on the other half (`server_pin`, `load_pin`: taskset prefixes);
# VETH=1 as well: the load generator over its own veth pair (loadbox_veth),
# else over loopback. Sets `server_ip`, `source_from` (ringbeat-load flags),
# `server_cpus` and `placement` (one line for the report).
loadbox_place() {
  local cores half
  cores=$(nproc)
  server_pin=(); load_pin=(); server_ip=127.0.0.1; source_from=(); server_cpus="0-$((cores - 1))"
  placement="shared: server and load generator on all $cores cores, over loopback"
  if [ "$1" != 1 ] || [ "$cores" -lt 2 ]; then return 0; fi
  half=$((cores / 2))
  server_cpus="0-$((half - 1))"
  server_pin=(taskset -c "$server_cpus"); load_pin=(taskset -c "$half-$((cores - 1))")
  placement="pinned: server on cores $server_cpus, load generator on cores $half-$((cores - 1))"
  if [ "$2" = 1 ]; then
    if loadbox_veth "$(printf '%x' $(( (1 << half) - 1 )))" "$(printf '%x' $(( ((1 << cores) - 1) ^ ((1 << half) - 1) )))"; then
      server_ip=$veth_server; source_from=(--source-from "$veth_source")
      placement="$placement, over a veth pair, each end's receive on its own side's cores"
      return 0
    fi
    echo "$loadbox_tag: could not set up the veth pair; over loopback"
  fi
  placement="$placement, over loopback"
}

# How many cores `loadbox_place` gave the server (`server_cpus`, "A-B").
server_core_count() {
  echo $(( ${server_cpus#*-} - ${server_cpus%-*} + 1 ))
}

# `loadbox_veth SERVER_MASK LOAD_MASK`: the load generator gets a network
# namespace of its own, joined to this one by a veth pair: the server's end
# is $veth_server (198.18.0.1, in the benchmarking range of RFC 2544), the
# load end carries 64 source addresses from $veth_source (198.18.0.2). Receive
# Packet Steering puts each end's TCP input on its own side's cores (hex
# cpu masks), as between two machines. On loopback the sender's core runs
# the receiver's TCP input: the load generator's core did the server's
# handshakes and HELLOs, the server's core its clients' WELCOMEs and PONGs.
# Run the load generator with `$loadbox_in`. Returns 1 (and the caller
# falls back to loopback) where that cannot be done.
loadbox_veth() {
  local srv="rbs$$" ld="rbl$$" i
  command -v ip >/dev/null || return 1
  [ -e /sys/class/net/lo/queues/rx-0/rps_cpus ] || return 1
  loadbox_ns="$loadbox_tag-$$"
  ip netns add "$loadbox_ns" || { loadbox_ns=""; return 1; }
  # Called as `loadbox_veth … || fallback`, where set -e does not act:
  # each step checks itself. Deleting the namespace at exit deletes the pair.
  ip link add "$srv" type veth peer name "$ld" netns "$loadbox_ns" || return 1
  ip addr add 198.18.0.1/24 dev "$srv" && ip link set "$srv" up || return 1
  ip netns exec "$loadbox_ns" ip link set lo up || return 1
  for i in $(seq 2 65); do
    ip netns exec "$loadbox_ns" ip addr add "198.18.0.$i/24" dev "$ld" || return 1
  done
  ip netns exec "$loadbox_ns" ip link set "$ld" up || return 1
  echo "$1" > "/sys/class/net/$srv/queues/rx-0/rps_cpus" || return 1
  ip netns exec "$loadbox_ns" sh -c "echo $2 > /sys/class/net/$ld/queues/rx-0/rps_cpus" || return 1
  # Steered packets wait in the target core's backlog, 1,000 by default:
  # a load worker keeps up to 1,024 connects in flight.
  load_sysctl_set "$loadbox_tag" net.core.netdev_max_backlog 65535 || return 1
  loadbox_in=(ip netns exec "$loadbox_ns")
  veth_server=198.18.0.1
  veth_source=198.18.0.2
  echo "$loadbox_tag: load generator in namespace $loadbox_ns over veth $srv/$ld, receive steered: server end to cpus 0x$1, load end to 0x$2"
}

#   load_sysctls_apply TAG    # prints "TAG: sysctl k: 'old' -> 'new'"
#   load_sysctls_restore TAG  # writes the saved values back (call from a trap)
declare -A load_sysctls_want=(
  [net.ipv4.ip_local_port_range]="1024 65000"
  [net.core.somaxconn]=65535
  [net.ipv4.tcp_max_syn_backlog]=65535
  [net.core.netdev_max_backlog]=65535
  # Both ends of every connection are open files, direct descriptors too.
  [fs.file-max]=4194304
  # Loopback flows are tracked when nf_conntrack is loaded; a full table
  # drops SYNs ("nf_conntrack: table full").
  [net.netfilter.nf_conntrack_max]=4194304
  # Pages for all TCP buffers. The default (~1.5 GB at pressure) runs out
  # with two million sockets each holding a PING or PONG for a moment: the
  # kernel then logs "TCP: out of memory" and kills sockets.
  [net.ipv4.tcp_mem]="1572864 2097152 3145728"
)
declare -A load_sysctls_saved=()

load_sysctls_apply() {
  local k
  for k in "${!load_sysctls_want[@]}"; do
    load_sysctl_set "$1" "$k" "${load_sysctls_want[$k]}" || true
  done
}

# `load_sysctl_set TAG KEY VALUE`: saves the old value for the restore,
# prints the change and applies it.
load_sysctl_set() {
  local old
  old=$(sysctl -n "$2" 2>/dev/null | tr '\t' ' ') || return 1
  [ -n "${load_sysctls_saved[$2]+set}" ] || load_sysctls_saved[$2]=$old
  echo "$1: sysctl $2: '$old' -> '$3'"
  sysctl -qw "$2=$3" || { echo "$1: (could not set $2)"; return 1; }
}

load_sysctls_restore() {
  local k
  for k in "${!load_sysctls_saved[@]}"; do
    sysctl -qw "$k=${load_sysctls_saved[$k]}" 2>/dev/null || true
  done
  if [ ${#load_sysctls_saved[@]} -gt 0 ]; then echo "$1: sysctls restored"; fi
  load_sysctls_saved=()
}

# Kernel slab in use, kB: active objects × object size (/proc/slabinfo, root),
# else meminfo's Slab, which also counts freed objects the allocator keeps
# cached and so undercounts a run that follows another.
slab_kb() {
  if [ -r /proc/slabinfo ]; then
    awk 'NR > 2 {s += $2 * $4} END {print int(s / 1024)}' /proc/slabinfo
  else
    awk '/^Slab:/ {print $2}' /proc/meminfo
  fi
}

# Waits (at most 90 s) until the previous run's TCP sockets are gone, so the
# next run's kernel-memory delta is its own: `wait_sockets_freed TAG` waits
# for open sockets of this namespace; `wait_sockets_freed TAG tw` also for
# TIME_WAIT ones (256 B each, gone after 60 s); `wait_sockets_freed TAG
# alloc` for every TCP socket the kernel still holds, in any namespace (a
# million-pair run takes tens of seconds to tear down, and the next one
# would share the cores and TCP memory with that).
wait_sockets_freed() {
  local left kinds="inuse"
  case "${2:-}" in
    tw) kinds="inuse tw" ;;
    alloc) kinds="alloc" ;;
  esac
  for _ in $(seq 90); do
    left=$(awk -v kinds="$kinds" '/^TCP:/ {for (i = 2; i < NF; i++) if (index(" " kinds " ", " " $i " ")) n += $(i + 1); print n + 0}' /proc/net/sockstat)
    [ "${left:-0}" -lt 2000 ] && return 0
    sleep 1
  done
  echo "$1: $left TCP sockets still there after 90 s; kernel bytes of the next run may be off" >&2
}
