#!/bin/busybox sh
# /init of the kernel-matrix guest (scripts/kernels.sh): runs the checks and
# prints every result between @@ markers on the serial console, then powers
# off. Everything here is bounded: each step has a timeout, and the host
# kills qemu after its own limit.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /tmp && mount -t tmpfs tmp /tmp
ip link set lo up
ulimit -n 65536
. /etc/matrix.env # CLIENTS, DURATION_S, MIX

echo "@@KERNEL $(uname -r)"
echo "@@FEATURES $(ringbeat features 2>&1)"

run_mode() {
  mode=$1
  RUST_LOG=info ringbeat serve --listen 127.0.0.1:7700 --io-mode "$mode" \
    --interval 1s --timeout 3s --tick 100ms --shards 2 --max-connections 4096 \
    2>/tmp/server-$mode.log &
  pid=$!
  i=0
  while ! grep -q listening /tmp/server-$mode.log 2>/dev/null; do
    i=$((i + 1))
    if [ $i -gt 300 ] || ! kill -0 $pid 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "@@BEGIN $mode"
  echo "@@SERVERLOG"
  grep -E "io mode|error|ERROR|WARN" /tmp/server-$mode.log | head -n 20
  echo "@@TAKEOVER $(timeout 30 takeover_check 127.0.0.1:7700 2>&1 | tail -n 1)"
  timeout $((DURATION_S + 30)) ringbeat-load --connect 127.0.0.1:7700 \
    --clients "$CLIENTS" --ramp 200 --interval 1s --timeout 3s --tick 100ms \
    --fault-after 1s --duration "${DURATION_S}s" --hello --mix "$MIX" $LOAD_FLAGS \
    --json /tmp/load-$mode.json >/tmp/load-$mode.out 2>&1
  echo "@@LOADRC $?"
  { grep -i -E "panic|error|warn" /tmp/load-$mode.out | head -n 5; tail -n 2 /tmp/load-$mode.out; } | sed "s/^/@@LOADOUT /"
  echo "@@LOADJSON $(tr -d '\n' </tmp/load-$mode.json 2>/dev/null)"
  kill -TERM $pid
  i=0
  while kill -0 $pid 2>/dev/null && [ $i -lt 300 ]; do i=$((i + 1)); sleep 0.1; done
  if kill -0 $pid 2>/dev/null; then
    kill -KILL $pid
    echo "@@SIGTERM hung"
  fi
  wait $pid
  echo "@@SIGTERMRC $?"
  tail -n 3 /tmp/server-$mode.log | sed 's/^/@@SERVERTAIL /'
  echo "@@END $mode"
}

run_mode auto
run_mode compat
echo "@@DONE"
sync
poweroff -f
