#!/usr/bin/env bash
# Installs what the project needs beyond the Rust toolchain. Idempotent.
set -euo pipefail
if ! rustup component list --installed 2>/dev/null | grep -q '^clippy'; then rustup component add clippy; fi
if ! rustup component list --installed 2>/dev/null | grep -q '^rustfmt'; then rustup component add rustfmt; fi
