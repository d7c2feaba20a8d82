#!/usr/bin/env bash
# Fuzzes every path that reads bytes from a car or a partner, for longer than the corpus
# replay in `cargo test` does: one target, or all of them one after the other.
#
#   scripts/fuzz.sh                    # every target, 300 s each
#   scripts/fuzz.sh mqtt_session 900   # one target, 15 minutes
#
# Needs the nightly toolchain (rustup toolchain install nightly); installs cargo-fuzz if it is
# missing. Inputs that reach new code are added to fuzz/corpus/<target>/, crashes are written
# to fuzz/artifacts/<target>/. After each run the corpus is minimized (cargo fuzz cmin) and the
# hand-written seeds are written back, so what is left is worth committing:
# `cargo test -p gateway --test fuzz_corpus` replays it on stable.
set -euo pipefail
cd "$(dirname "$0")/.."

target="${1:-all}"
seconds="${2:-300}"

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzzing needs the nightly toolchain: rustup toolchain install nightly" >&2
  exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

if [ "$target" = all ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
else
  targets=("$target")
fi
for t in "${targets[@]}"; do
  echo "== fuzzing $t for ${seconds}s"
  # -timeout: no single input may take 30 s (the session target gives up on a session at 10 s).
  cargo +nightly fuzz run "$t" -- -max_total_time="$seconds" -timeout=30
  cargo +nightly fuzz cmin "$t"
done
# cmin keeps only inputs that add coverage, which may drop a hand-written seed.
WRITE_FUZZ_SEEDS=1 cargo test -q -p gateway --test fuzz_corpus the_seed_files_are_the_seeds_made_here
