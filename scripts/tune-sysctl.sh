#!/usr/bin/env bash
# Kernel settings for a box that holds a million ringbeat connections.
#
#   sudo bash scripts/tune-sysctl.sh            # raise what is too low; print before/after
#   bash scripts/tune-sysctl.sh --dry-run       # print what would change, change nothing
#   sudo bash scripts/tune-sysctl.sh --persist  # also write /etc/sysctl.d/90-ringbeat.conf
#   sudo bash scripts/tune-sysctl.sh --revert   # restore the values saved by the first run
#
# Only raises: a value already above the target is left alone. The first run
# saves every value it changes to $RINGBEAT_SYSCTL_STATE
# (default /var/lib/ringbeat/sysctl.saved); --revert writes them back and
# removes the file (and the --persist file). The settings:
#
#   fs.nr_open                    2097152   ceiling of RLIMIT_NOFILE (LimitNOFILE)
#   fs.file-max                   4194304   open files system-wide
#   net.core.somaxconn            65535     listen backlog cap (restart storms)
#   net.ipv4.tcp_max_syn_backlog  65535     half-open connections queued
#   net.core.netdev_max_backlog   16384     packets queued per CPU before drops
#   net.ipv4.tcp_mem              RAM/16 RAM/8 RAM/4 (pages): TCP buffer memory
#   net.ipv4.ip_local_port_range  1024 65535  ephemeral ports (client/load boxes)
#   kernel.io_uring_disabled      0         io_uring allowed (kernel 6.6+ only)
#
# Tests point it at a fake tree: RINGBEAT_SYSCTL_ROOT (default /proc/sys),
# RINGBEAT_MEMINFO (default /proc/meminfo), RINGBEAT_SYSCTL_CONF.
set -euo pipefail

ROOT=${RINGBEAT_SYSCTL_ROOT:-/proc/sys}
STATE=${RINGBEAT_SYSCTL_STATE:-/var/lib/ringbeat/sysctl.saved}
MEMINFO=${RINGBEAT_MEMINFO:-/proc/meminfo}
CONF=${RINGBEAT_SYSCTL_CONF:-/etc/sysctl.d/90-ringbeat.conf}
KEYS=(fs.nr_open fs.file-max net.core.somaxconn net.ipv4.tcp_max_syn_backlog
      net.core.netdev_max_backlog net.ipv4.tcp_mem net.ipv4.ip_local_port_range
      kernel.io_uring_disabled)

mode=apply
dry_run=0
persist=0
for arg in "$@"; do
    case $arg in
        --dry-run) dry_run=1 ;;
        --revert) mode=revert ;;
        --persist) persist=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "tune-sysctl: unknown argument $arg (try --help)" >&2; exit 2 ;;
    esac
done

if [[ $dry_run == 0 && $ROOT == /proc/sys && $EUID != 0 ]]; then
    echo "tune-sysctl: changing sysctls needs root (or use --dry-run)" >&2
    exit 1
fi

path_of() { echo "$ROOT/${1//.//}"; }
# A sysctl's value with tabs and repeated spaces folded to one space.
get() { local p; p=$(path_of "$1"); [[ -r $p ]] && tr -s ' \t' '  ' < "$p" | sed 's/^ //; s/ $//'; }
put() { echo "$2" > "$(path_of "$1")"; }
max() { if (( $1 > $2 )); then echo "$1"; else echo "$2"; fi; }
min() { if (( $1 < $2 )); then echo "$1"; else echo "$2"; fi; }

# The value `key` should have, given its current value (never lower).
want() {
    local key=$1 cur=$2
    case $key in
        fs.nr_open) max "$cur" 2097152 ;;
        fs.file-max) max "$cur" 4194304 ;;
        net.core.somaxconn|net.ipv4.tcp_max_syn_backlog) max "$cur" 65535 ;;
        net.core.netdev_max_backlog) max "$cur" 16384 ;;
        net.ipv4.tcp_mem)
            local kib pages a b c
            kib=$(awk '/^MemTotal:/ {print $2}' "$MEMINFO")
            pages=$(( kib / 4 ))
            read -r a b c <<< "$cur"
            echo "$(max "$a" $((pages / 16))) $(max "$b" $((pages / 8))) $(max "$c" $((pages / 4)))" ;;
        net.ipv4.ip_local_port_range)
            local lo hi
            read -r lo hi <<< "$cur"
            echo "$(min "$lo" 1024) $(max "$hi" 65535)" ;;
        kernel.io_uring_disabled) echo 0 ;;
    esac
}

row() { printf '%-30s %-28s %s\n' "$1" "$2" "$3"; }

saved() { [[ -f $STATE ]] && grep -q "^$1=" "$STATE"; }

apply() {
    local key before after changed=()
    row key before after
    for key in "${KEYS[@]}"; do
        if ! before=$(get "$key"); then
            row "$key" "(absent)" "(skipped)"
            continue
        fi
        after=$(want "$key" "$before")
        if [[ $after == "$before" ]]; then
            row "$key" "$before" "$after (ok)"
            continue
        fi
        changed+=("$key=$after")
        if [[ $dry_run == 1 ]]; then
            row "$key" "$before" "$after (would set)"
            continue
        fi
        if ! saved "$key"; then
            mkdir -p "$(dirname "$STATE")"
            echo "$key=$before" >> "$STATE"
        fi
        put "$key" "$after"
        row "$key" "$before" "$(get "$key")"
    done
    if [[ $persist == 1 && $dry_run == 0 && ${#changed[@]} -gt 0 ]]; then
        mkdir -p "$(dirname "$CONF")"
        { echo "# written by ringbeat scripts/tune-sysctl.sh; --revert removes it"
          printf '%s\n' "${changed[@]/=/ = }"; } > "$CONF"
        echo "persisted to $CONF"
    fi
    [[ $dry_run == 1 ]] && echo "dry run: nothing changed"
    [[ $dry_run == 0 && ${#changed[@]} -gt 0 ]] && echo "saved previous values in $STATE (--revert restores them)"
    return 0
}

revert() {
    if [[ ! -f $STATE ]]; then
        echo "tune-sysctl: nothing to revert ($STATE does not exist)"
        return 0
    fi
    local key before
    row key before after
    while IFS='=' read -r key before; do
        [[ -z $key ]] && continue
        if [[ $dry_run == 1 ]]; then
            row "$key" "$(get "$key")" "$before (would restore)"
        else
            local now; now=$(get "$key")
            put "$key" "$before"
            row "$key" "$now" "$(get "$key")"
        fi
    done < "$STATE"
    if [[ $dry_run == 0 ]]; then
        rm -f "$STATE"
        [[ -f $CONF ]] && rm -f "$CONF" && echo "removed $CONF"
    else
        echo "dry run: nothing changed"
    fi
    return 0
}

"$mode"
