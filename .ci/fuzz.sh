#!/usr/bin/env bash
# Runs each fuzz target for FUZZ_SECONDS (default 60) on the stable toolchain.
# New inputs go to a scratch corpus; the committed seeds stay untouched. A crash
# leaves its input in fuzz/artifacts/<target>/ and fails the run: add it to the
# seeds (and a regression test) when fixed.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-60}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
cargo fuzz build -s none -O
for t in open_dir ops_crash c_abi admin_request; do
  work=$(mktemp -d)
  echo "fuzz $t for ${secs}s"
  cargo fuzz run -s none -O "$t" "$work" "fuzz/corpus/$t" -- -max_total_time="$secs" 2>&1 \
    | grep -E "^Done|ERROR|panicked" || true
  test -z "$(ls -A "fuzz/artifacts/$t" 2>/dev/null)" || { echo "fuzz $t found a crash"; exit 1; }
  rm -rf "$work"
done
