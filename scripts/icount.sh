#!/usr/bin/env bash
# Instruction counts, the perf figure that does not move with the box's
# load: runs bench/icount.rs (a fixed engine workload) under callgrind once
# per phase, collecting only inside that phase's function, and prints
# instructions per accept (+HELLO), per heartbeat (PING in, PONG out), per
# sweep entry and per takeover (engine and its simulated kernel; no
# syscalls). std's HashMap seeds come from getrandom(), which a tiny
# preloaded shim (built here with cc) makes constant, so the registry's
# probing is the same every run. It runs everything twice and exits 1 if the
# two counts differ.
#
#   bash scripts/icount.sh            # N=10000 connections, M=10 PINGs each
#   bash scripts/icount.sh 100000 5
#
# Needs valgrind (apt-get install valgrind; installed here when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
M=${2:-10}
SWEEPS=10 # bench/icount.rs SWEEPS
if ! command -v valgrind >/dev/null; then
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q valgrind >/dev/null
fi
BIN=$(nice -n 10 cargo bench --bench icount --no-run 2>&1 | sed -n 's/.*Executable bench\/icount.rs (\(.*\))/\1/p')
[ -x "$BIN" ] || { echo "icount: could not build bench/icount.rs" >&2; exit 1; }
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
printf '%s\n' '#include <string.h>' '#include <sys/types.h>' \
  'ssize_t getrandom(void *b, size_t n, unsigned f) { (void)f; memset(b, 0x5a, n); return (ssize_t)n; }' \
  >"$OUT/fixedrand.c"
cc -shared -fPIC -O2 -o "$OUT/fixedrand.so" "$OUT/fixedrand.c"

count() { # phase -> instructions inside it
  LD_PRELOAD="$OUT/fixedrand.so" valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.$1" \
    --collect-atstart=no "--toggle-collect=icount::phase_$1" "$BIN" "$N" "$M" >/dev/null 2>&1
  sed -n 's/^totals: *//p' "$OUT/cg.$1"
}

declare -A PER=([accept]=$N [heartbeat]=$((N * M)) [sweep]=$((N * SWEEPS)) [takeover]=$N)
echo "instructions (callgrind Ir) per operation, N=$N connections, M=$M PINGs each, $(date -u +%F)"
printf '%-10s %14s %14s %10s %s\n' phase "run 1" "run 2" "per op" "(ops)"
status=0
for phase in accept heartbeat sweep takeover; do
  a=$(count $phase)
  b=$(count $phase)
  [ "$a" = "$b" ] || status=1
  printf '%-10s %14s %14s %10s %s\n' "$phase" "$a" "$b" \
    "$(python3 -c "print(f'{$a / ${PER[$phase]}:.1f}')")" "(${PER[$phase]})"
done
[ $status -eq 0 ] && echo "the same counts twice: yes" || echo "the same counts twice: NO"
exit $status
