#!/usr/bin/env bash
# Builds the codec fuzzers with libFuzzer + AddressSanitizer and runs each for SECONDS
# (default 60). A crash, leak or failed invariant fails the run and leaves the input in
# Tests/Fuzz/findings/. Usage: Tests/Fuzz/run.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${1:-60}
FLAGS=(-c release --scratch-path .build -Xswiftc -sanitize=fuzzer,address)
if ! swift build "${FLAGS[@]}" > .build-fuzz.log 2>&1; then
    grep -E "error" .build-fuzz.log >&2 || tail -20 .build-fuzz.log >&2
    echo "error: fuzzer build failed" >&2
    exit 1
fi
BIN=$(swift build "${FLAGS[@]}" --show-bin-path)
mkdir -p findings corpus
status=0
for fuzzer in fuzz-http-request fuzz-http-response fuzz-websocket fuzz-tunnel fuzz-isolation; do
    mkdir -p "corpus/$fuzzer"
    echo "==> $fuzzer for ${SECONDS_EACH}s"
    rc=0
    "$BIN/$fuzzer" -max_total_time="$SECONDS_EACH" -max_len=4096 -artifact_prefix="findings/$fuzzer-" \
        -print_final_stats=1 "corpus/$fuzzer" > "findings/$fuzzer.log" 2>&1 || rc=$?
    grep -E "^Done|stat::number_of_executed_units" "findings/$fuzzer.log" || true
    if [ "$rc" -ne 0 ]; then
        echo "error: $fuzzer failed (exit $rc); see Tests/Fuzz/findings/$fuzzer.log" >&2
        grep -E "ERROR|SUMMARY|Fatal error|Precondition|precondition" "findings/$fuzzer.log" | head -10 >&2 || true
        status=1
    fi
done
exit $status
