#!/usr/bin/env bash
# Kernel matrix: boots Debian's 5.10, 6.1 and 6.12 kernels under qemu (TCG,
# no KVM needed) with a tiny initramfs holding the release ringbeat,
# ringbeat-load and takeover_check, runs `ringbeat features`, then the server
# in --io-mode auto and compat against a few hundred faulty clients, SIGTERM,
# and prints one table row per kernel and mode. Exits 1 if a row fails.
#
#   bash scripts/kernels.sh                 # all three series
#   bash scripts/kernels.sh 5.10 6.12       # some of them
#   CLIENTS=300 DURATION_S=10 QEMU_TIMEOUT_S=600 bash scripts/kernels.sh
#
# Kernel packages and extracted vmlinuz are cached under .cache/kernels/
# (gitignored). Needs root for apt-get install of qemu-system-x86,
# busybox-static and cpio when they are missing. Network: Debian's archive
# only (the guest has loopback only).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=$ROOT/.cache/kernels
SERIES=("$@")
[ ${#SERIES[@]} -gt 0 ] || SERIES=(5.10 6.1 6.12)
CLIENTS=${CLIENTS:-300}
DURATION_S=${DURATION_S:-10}
MIX=${MIX:-healthy=0.7,silent=0.1,reset=0.1,garbage=0.1}
QEMU_TIMEOUT_S=${QEMU_TIMEOUT_S:-600}
mkdir -p "$CACHE"/{debs,boot,logs,apt/etc,apt/lists/partial,apt/cache/archives/partial}

need_tools() {
  local missing=()
  command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
  [ -x /bin/busybox ] && /bin/busybox --list | grep -qx ip || missing+=(busybox-static)
  command -v cpio >/dev/null || missing+=(cpio)
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "kernels: installing ${missing[*]}" >&2
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

# A private apt configuration that sees bullseye, bookworm(-backports) and
# trixie without touching the system's sources.
APT_OPTS=(-o "Dir::Etc::SourceList=$CACHE/apt/etc/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o "Dir::State::Lists=$CACHE/apt/lists" -o "Dir::Cache=$CACHE/apt/cache" -o Debug::NoLocking=1)
apt_lists() {
  cat >"$CACHE/apt/etc/sources.list" <<'LIST'
deb http://deb.debian.org/debian bullseye main
deb http://deb.debian.org/debian-security bullseye-security main
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-backports main
deb http://deb.debian.org/debian trixie main
LIST
  if [ -z "$(find "$CACHE/apt/lists" -name '*_Packages' -mmin -1440 2>/dev/null)" ]; then
    timeout 600 apt-get "${APT_OPTS[@]}" update -q >/dev/null
  fi
}

# Newest signed amd64 image of a series, e.g. 5.10 -> linux-image-5.10.0-46-amd64.
package_for() {
  local re
  case $1 in
    5.10) re='^linux-image-5\.10\.0-[0-9]+-amd64$' ;;
    6.1) re='^linux-image-6\.1\.0-[0-9]+-amd64$' ;;
    6.12) re='^linux-image-6\.12\.[0-9]+\+deb13-amd64$' ;;
    *) echo "kernels: unknown series $1 (5.10, 6.1, 6.12)" >&2; return 1 ;;
  esac
  apt-cache "${APT_OPTS[@]}" search --names-only "$re" | awk '{print $1}' | sort -V | tail -n 1
}

# Prints the path of the vmlinuz for a series, downloading it once.
vmlinuz_for() {
  local pkg deb
  pkg=$(package_for "$1")
  [ -n "$pkg" ] || { echo "kernels: no package published for $1" >&2; return 1; }
  if [ ! -f "$CACHE/boot/$pkg.vmlinuz" ]; then
    deb=$(ls "$CACHE/debs/${pkg}_"*.deb 2>/dev/null | head -n 1 || true)
    if [ -z "$deb" ]; then
      (cd "$CACHE/debs" && timeout 900 apt-get "${APT_OPTS[@]}" download -q "$pkg" >/dev/null)
      deb=$(ls "$CACHE/debs/${pkg}_"*.deb | head -n 1)
    fi
    local x; x=$(mktemp -d)
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$x" --wildcards './boot/vmlinuz-*'
    mv "$x"/boot/vmlinuz-* "$CACHE/boot/$pkg.vmlinuz"
    rm -rf "$x"
  fi
  echo "$CACHE/boot/$pkg.vmlinuz"
}

# The initramfs: busybox, the three binaries (stripped), their libraries.
build_initramfs() {
  nice -n 10 cargo build --release --quiet --bin ringbeat --bin ringbeat-load --example takeover_check
  local dir=$CACHE/initramfs bin lib
  rm -rf "$dir"; mkdir -p "$dir"/{bin,etc,proc,sys,dev,tmp,lib64,lib/x86_64-linux-gnu}
  cp /bin/busybox "$dir/bin/busybox"
  for bin in target/release/ringbeat target/release/ringbeat-load target/release/examples/takeover_check; do
    strip -o "$dir/bin/$(basename "$bin")" "$bin"
    for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
      mkdir -p "$dir$(dirname "$lib")"; cp -L "$lib" "$dir$lib"
    done
  done
  cp scripts/kernels/init.sh "$dir/init"; chmod +x "$dir/init"
  printf 'CLIENTS=%s\nDURATION_S=%s\nMIX=%s\nLOAD_FLAGS="%s"\n' \
    "$CLIENTS" "$DURATION_S" "$MIX" "${LOAD_FLAGS:-}" >"$dir/etc/matrix.env"
  (cd "$dir" && find . | cpio -o -H newc --quiet | gzip -1) >"$CACHE/initramfs.cpio.gz"
}

boot() { # series vmlinuz log
  timeout "$QEMU_TIMEOUT_S" qemu-system-x86_64 -accel tcg -m 2048 -smp 2 -nographic -no-reboot \
    -kernel "$2" -initrd "$CACHE/initramfs.cpio.gz" \
    -append "console=ttyS0 panic=-1 quiet loglevel=3 rdinit=/init" </dev/null >"$3" 2>&1 || true
}

need_tools
apt_lists
build_initramfs
ROWS=$CACHE/logs/rows.tsv; : >"$ROWS"
for s in "${SERIES[@]}"; do
  log=$CACHE/logs/$s.log
  if ! vm=$(vmlinuz_for "$s"); then
    printf '%s\tno package\n' "$s" >>"$ROWS"; continue
  fi
  echo "kernels: booting $(basename "$vm" .vmlinuz) (log $log)" >&2
  start=$(date +%s)
  boot "$s" "$vm" "$log"
  echo "kernels: $s done in $(($(date +%s) - start)) s" >&2
  python3 scripts/kernels/table.py --series "$s" "$log" >>"$ROWS"
done
python3 scripts/kernels/table.py --render "$ROWS"
