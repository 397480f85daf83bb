#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo fuzz / libFuzzer) of the frame decoder and
# the sans-IO engine: each target runs for a bounded time from its seeds
# (fuzz/seeds/TARGET) plus what earlier runs found (fuzz/corpus/TARGET,
# gitignored). A crash stops the run with exit 1 and leaves the input in
# fuzz/artifacts/TARGET/; make it a regression test in tests/ (see
# docs/BENCH.md, "Proof").
#
#   bash scripts/fuzz.sh                 # every target, 300 s each
#   bash scripts/fuzz.sh 60 decoder      # one target, 60 s
#   bash scripts/fuzz.sh --smoke         # scripts/test.sh: install, build and
#                                        # up to 45 s per target within 180 s;
#                                        # skips with a note when the install
#                                        # or build does not fit (fresh machine)
#
# The toolchain here is stable only: targets are built with `-s none` (no
# sanitizer: they reach no unsafe code) and with debug assertions (-a), so
# the engine's own debug_assert!s are checked too.
set -euo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
if [ "${1:-}" = "--smoke" ]; then SMOKE=1; shift; fi
SECONDS_PER_TARGET=${1:-300}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=($(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^ringbeat-fuzz$'))

# The smoke keeps to a budget: install, build and runs together.
SMOKE_BUDGET_S=${FUZZ_SMOKE_BUDGET_S:-180}
DEADLINE=$(($(date +%s) + SMOKE_BUDGET_S))
left_s() { echo $((DEADLINE - $(date +%s))); }
skip() {
  echo "fuzz: SKIPPED the fuzz smoke: $1 (bash scripts/fuzz.sh installs and builds without a budget; later smokes then run)"
  exit 0
}

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz from crates.io (about 2 min, once; kept in ~/.cargo/bin)" >&2
  limit=$([ $SMOKE -eq 1 ] && left_s || echo 900)
  if ! timeout "$limit" nice -n 10 cargo install cargo-fuzz --locked --quiet; then
    [ $SMOKE -eq 1 ] && skip "cargo-fuzz was not installed within the budget"
    echo "fuzz: could not install cargo-fuzz" >&2
    exit 1
  fi
fi
# Smoke runs (CI's fresh clones) build into a cache outside the clone, so
# only the first run on a machine pays for the instrumented dependencies.
if [ $SMOKE -eq 1 ]; then export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-${HOME:-/tmp}/.cache/ringbeat/fuzz-target}; fi

python3 fuzz/seeds/make_seeds.py
cd fuzz
status=0
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t" "seeds/$t"
  echo "== fuzz $t"
  if [ $SMOKE -eq 1 ]; then
    # A build cut short keeps what it finished for the next smoke; a build
    # that fails is a failure (it once hid a target that no longer compiled).
    build_rc=0
    timeout "$(left_s)" nice -n 10 cargo fuzz build -s none -a "$t" || build_rc=$?
    [ $build_rc -eq 124 ] && skip "the build of $t did not finish within the budget"
    [ $build_rc -eq 0 ] || { echo "fuzz: the build of $t FAILED (exit $build_rc)" >&2; exit 1; }
    SECONDS_PER_TARGET=$(($(left_s) / (${#TARGETS[@]} - ${done_targets:-0})))
    [ "$SECONDS_PER_TARGET" -gt 45 ] && SECONDS_PER_TARGET=45
    [ "$SECONDS_PER_TARGET" -ge 10 ] || skip "less than 10 s left for $t"
    done_targets=$((${done_targets:-0} + 1))
  else
    nice -n 10 cargo fuzz build -s none -a "$t"
  fi
  start=$(date +%s)
  if nice -n 10 cargo fuzz run -s none -a "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
    -print_final_stats=1 >"corpus/$t.log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "corpus/$t.log" | tail -n 1)
    cov=$(grep -o 'cov: [0-9]*' "corpus/$t.log" | tail -n 1)
    echo "fuzz $t: no crash in $(($(date +%s) - start)) s, ${runs:-?} inputs, $cov, corpus $(ls "corpus/$t" | wc -l) files"
  else
    status=1
    grep -v '^ \{3,\}\|^ *at ' "corpus/$t.log" | grep -A12 -m1 'panicked\|ERROR' || tail -n 30 "corpus/$t.log"
    echo "fuzz $t: CRASH after $(($(date +%s) - start)) s; input in fuzz/artifacts/$t/ (replay: cd fuzz && cargo fuzz run -s none -a $t ARTIFACT)"
  fi
done
exit $status
