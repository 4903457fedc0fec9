#!/usr/bin/env bash
# RUSTC_WRAPPER for scripts/fuzz.sh: compiles the crates named in UNTRACED without coverage
# instrumentation (AddressSanitizer stays). They are not ours, and tracing them cost the fuzzer
# most of its time: the chunk target spent 90 % of it in the Reed-Solomon decoder's traced
# compares (perf), at 455 inputs/s.
set -euo pipefail
rustc=$1
shift
untraced=" ${UNTRACED:-reed_solomon_simd} "
crate=
prev=
for a in "$@"; do
    [[ $prev == --crate-name ]] && crate=$a
    prev=$a
done
if [[ -n $crate && $untraced == *" $crate "* ]]; then
    args=()
    for a in "$@"; do
        case $a in
            -Cpasses=sancov-module | -Cllvm-args=-sanitizer-coverage-*) ;;
            *) args+=("$a") ;;
        esac
    done
    exec "$rustc" "${args[@]}"
fi
exec "$rustc" "$@"
