#!/usr/bin/env bash
# Installs what the project needs beyond the Rust toolchain. Idempotent.
#
#   bash scripts/setup.sh           # rustfmt + clippy (for scripts/test.sh)
#   bash scripts/setup.sh --bench   # also mosquitto, the MQTT peer of scripts/bench.sh,
#                                   # and haproxy, the TLS proxy of scripts/tls-demo.sh
set -euo pipefail
if ! rustup component list --installed 2>/dev/null | grep -q '^clippy'; then rustup component add clippy; fi
if ! rustup component list --installed 2>/dev/null | grep -q '^rustfmt'; then rustup component add rustfmt; fi

if [ "${1:-}" = "--bench" ] && ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" -eq 0 ]; then
    # The distribution's package is the peer the bench compares against.
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends mosquitto >/dev/null \
      || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends mosquitto >/dev/null; } \
      || echo "setup: could not install mosquitto; bench.sh will skip that peer" >&2
  else
    echo "setup: install mosquitto with your package manager (needs root); bench.sh skips it until then" >&2
  fi
fi

# haproxy: TLS terminated in front of ringbeat, PROXY v2 behind it
# (docs/DEPLOY.md, Security; scripts/tls-demo.sh). Same path as mosquitto.
if [ "${1:-}" = "--bench" ] && ! command -v haproxy >/dev/null && [ ! -x /usr/sbin/haproxy ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" -eq 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends haproxy >/dev/null \
      || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends haproxy >/dev/null; } \
      || echo "setup: could not install haproxy; tls-demo.sh cannot run" >&2
  else
    echo "setup: install haproxy with your package manager (needs root); tls-demo.sh needs it" >&2
  fi
fi
