#!/usr/bin/env bash
# The one test command: format check, lints as errors, every test, docs.
# .ci/run calls exactly this. Run from anywhere: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -D warnings"
cargo clippy --all-targets --all-features -- -D warnings
echo "== cargo test"
cargo test --all-features
echo "== capacity planner (python unittest)"
python3 -m unittest discover -s scripts -p 'test_*.py'
echo "== cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features --quiet
echo "== fuzz smoke (scripts/fuzz.sh --smoke: at most 180 s)"
bash scripts/fuzz.sh --smoke
echo "== all checks passed"
