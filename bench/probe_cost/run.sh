#!/bin/sh
# What a probe adds to one call of malloc, free, calloc and realloc, with
# each glibc the tests have: alloc_calls.c built once, run as it is (this
# machine's glibc) and through copies pointed at the glibc trees unpacked by
# `cargo xtask test` (as the tests do), untraced and under each tracer given.
# Rounds interleave every (glibc, tracer) pair so that the machine's drift
# lands on all alike; the median of the rounds is printed, in ns per call.
#
# usage (root): bench/probe_cost/run.sh [ROUNDS] TRACER...
#   e.g. bench/probe_cost/run.sh 5 target/release/tracer /tmp/tracer-before
set -eu

rounds=${1:-5}
shift
here=$(cd "$(dirname "$0")" && pwd)
cache=${TRACER_TEST_CACHE:-$here/../../tests/cache}
calls=${CALLS:-50000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

gcc -O2 -o "$work/alloc_calls" "$here/alloc_calls.c"
for suite in trixie sid; do
    cp "$work/alloc_calls" "$work/alloc_calls-$suite"
    patchelf --set-interpreter "$cache/$suite-root/usr/lib64/ld-linux-x86-64.so.2" \
        --set-rpath "$cache/$suite-root/usr/lib/x86_64-linux-gnu" \
        "$work/alloc_calls-$suite"
done

# One line per run: glibc, tracer (or "untraced"), then the program's line.
for round in $(seq "$rounds"); do
    for build in alloc_calls alloc_calls-trixie alloc_calls-sid; do
        case $build in
            alloc_calls) glibc=2.36 ;;
            alloc_calls-trixie) glibc=2.41 ;;
            alloc_calls-sid) glibc=2.43 ;;
        esac
        line=$("$work/$build" "$calls" 3)
        echo "$glibc untraced $line" >>"$work/results"
        for tracer in "$@"; do
            line=$("$tracer" record -o "$work/out" -- "$work/$build" "$calls" 3 2>/dev/null |
                grep '^malloc ')
            echo "$glibc $tracer $line" >>"$work/results"
            rm -rf "$work/out"
        done
    done
    echo "round $round done" >&2
done

# "2.43 untraced malloc 21 free 33 calloc 27 realloc 6" -> medians per pair.
sort -k1,2 "$work/results" | awk '
function median(list,   n, v, i, j, t) {
    n = split(list, v, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++)
        if (v[j] + 0 < v[i] + 0) { t = v[i]; v[i] = v[j]; v[j] = t }
    return v[int((n + 1) / 2)]
}
{
    key = $1 " " $2
    if (!(key in seen)) { seen[key] = 1; order[++keys] = key }
    for (f = 3; f < NF; f += 2) values[key, $f] = values[key, $f] " " $(f + 1)
}
END {
    printf "%-6s %-40s %8s %8s %8s %8s\n", "glibc", "tracer", "malloc", "free", "calloc", "realloc"
    for (k = 1; k <= keys; k++) {
        split(order[k], p, " ")
        printf "%-6s %-40s %8s %8s %8s %8s\n", p[1], p[2],
            median(values[order[k], "malloc"]), median(values[order[k], "free"]),
            median(values[order[k], "calloc"]), median(values[order[k], "realloc"])
    }
}'
