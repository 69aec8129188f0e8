#!/usr/bin/env bash
# Builds the libFuzzer targets (Fuzz/, a package of its own) and runs each for a bounded time,
# printing per target the executions and whether anything was found. Exits 1 on a finding.
#
#   FUZZ_SECONDS=60      run time per target
#   FUZZ_TARGETS="..."   some targets only (default: all of them)
#   FUZZ_FLAGS="..."     more libFuzzer flags (-jobs, -dict, -max_len, ...)
#
# Seeds are Fuzz/Corpus/<target>/ (committed, never written to), with Fuzz/Corpus/<target>.dict
# if there is one; what the fuzzer learns goes to
# Fuzz/.build/corpus/<target>/ and is kept between runs; logs and crash inputs to
# Fuzz/Findings/<target>/ (git-ignored). Replay a finding: Fuzz/.build/release/<target> FILE
set -uo pipefail

cd "$(dirname "$0")/.."
swift=${SWIFT:-swift}
seconds=${FUZZ_SECONDS:-60}
# A target is a folder of Fuzz/Sources with an @main.
targets=${FUZZ_TARGETS:-$(grep -l '^@main' Fuzz/Sources/*/*.swift | xargs -n1 dirname | xargs -n1 basename | tr '\n' ' ')}

echo "Building the fuzz targets (release, -sanitize=fuzzer,address) ..."
$swift build -c release --package-path Fuzz -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library \
    || { echo "fuzz: the build failed" >&2; exit 2; }

# The Swift runtime's backtracer would print (slowly) over libFuzzer's own crash report.
export SWIFT_BACKTRACE=enable=no
found=0
printf '\n%-18s %14s %8s  %s\n' target executions seconds result
for target in $targets; do
    binary=Fuzz/.build/release/$target
    findings=Fuzz/Findings/$target
    corpus=Fuzz/.build/corpus/$target
    mkdir -p "$findings" "$corpus"
    log=$findings/fuzz.log
    # libFuzzer names what it saves crash-*, leak-*, timeout-*, oom-*: count the new ones (with
    # -fork=1 -ignore_crashes=1 it goes on past a finding and may exit 0).
    saved() { ls "$findings" | grep -E '^(crash|leak|timeout|oom)-' | sort; }
    before=$(saved)
    start=$(date +%s)
    dictionary=()
    [ -f "Fuzz/Corpus/$target.dict" ] && dictionary=(-dict="Fuzz/Corpus/$target.dict")
    # shellcheck disable=SC2086 # FUZZ_FLAGS is a list of flags
    "$binary" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$findings/" "${dictionary[@]}" ${FUZZ_FLAGS:-} "$corpus" "Fuzz/Corpus/$target" >"$log" 2>&1
    status=$?
    elapsed=$(( $(date +%s) - start ))
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    [ -n "$runs" ] || runs=$(sed -n 's/^#\([0-9]*\).*/\1/p' "$log" | tail -1)
    new=$(comm -13 <(echo "$before") <(saved) | grep -c .)
    if [ "$status" -eq 0 ] && [ "$new" -eq 0 ]; then
        result="nothing found"
    else
        found=1
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
        # The most telling line: a property, a Swift runtime failure, a sanitizer, then libFuzzer's.
        cause=$(grep -m1 -E '^property violated|Swift runtime failure|ERROR: (AddressSanitizer|LeakSanitizer)' "$log" \
                || grep -m1 -E 'ERROR: libFuzzer|SUMMARY' "$log")
        cause=$(sed -E 's/^ *#[0-9]+ 0x[0-9a-f]+ in //; s@ /<compiler-generated>@@' <<<"$cause")
        result="FOUND (exit $status, $new inputs saved): ${cause:-see $log}; last: ${artifact:-none}"
    fi
    printf '%-18s %14s %8s  %s\n' "$target" "${runs:-?}" "$elapsed" "$result"
done
if [ "$found" -ne 0 ]; then
    echo "fuzz: findings above; logs and inputs in Fuzz/Findings/" >&2
    exit 1
fi
