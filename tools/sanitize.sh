#!/usr/bin/env bash
# Build the native layer with a sanitizer and run the test suite under it.
#
#   tools/sanitize.sh [address|thread] [pytest arguments...]
#
# address: AddressSanitizer + UndefinedBehaviorSanitizer (the default);
# thread:  ThreadSanitizer.  Only native/*.c and cffi's glue are instrumented;
# libmsquic and CPython are not, so the sanitizer runtime is preloaded.  Every
# report (also from child processes the tests start) goes to a file under
# $PYMSQUIC_SANITIZE_LOGS (default build/sanitize-<mode>/); they are printed at
# the end, and any report fails the run.  PYMSQUIC_LSAN=1 adds leak checking
# (address mode).  PYMSQUIC_SANITIZE_MSQUIC=1 instruments libmsquic too (a
# separate cached build of a few minutes).  The normal build is restored on exit.
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

mode=address
case "${1:-}" in
    address|thread) mode=$1; shift ;;
esac

# The interpreter itself, not a pyenv shim: a shim is a bash script, and bash
# and tr under the preloaded runtime would report their own leaks.
python=$(python3 -c 'import sys; print(sys.executable)')

logs=${PYMSQUIC_SANITIZE_LOGS:-$repo/build/sanitize-$mode}
rm -rf "$logs" && mkdir -p "$logs"

restore() {
    echo "sanitize.sh: restoring the normal build" >&2
    env -u PYMSQUIC_SANITIZE "$python" setup.py -q build_ext --inplace >/dev/null 2>&1 \
        || echo "sanitize.sh: restoring failed; run: python3 setup.py build_ext --inplace" >&2
}
trap restore EXIT

PYMSQUIC_SANITIZE=$mode "$python" setup.py -q build_ext --inplace || exit 1

if [ "$mode" = address ]; then
    # libstdc++ too: ASan resolves __cxa_throw when it starts, and a C++
    # extension loaded later (matplotlib's) would otherwise fail a CHECK on throw.
    preload="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)"
    # CPython's own allocations at exit are not ours: leak checking is off
    # unless asked for (PYMSQUIC_LSAN=1), then with the suppressions of what
    # CPython and libmsquic keep for the whole process.
    leaks=0
    [ "${PYMSQUIC_LSAN:-0}" = 1 ] && leaks=1
    # GCC <= 13's __tls_get_addr interceptor can take a dynamic TLS block for one
    # with a glibc 2.19 header and hand LeakSanitizer a bogus range, on which its
    # tracer segfaults at exit (google/sanitizers#1322); a child of
    # test_unstarted_stream_never_hangs_registration_close[closed_by_the_peer] hit it.
    tls=""
    [ $leaks = 1 ] && tls="intercept_tls_get_addr=0:"
    # A 16 MiB quarantine of freed blocks instead of 256: tests that bound a
    # process's RSS (the reader that stops) would otherwise measure ASan.
    export ASAN_OPTIONS="${tls}detect_leaks=$leaks:quarantine_size_mb=16:log_path=$logs/asan:${ASAN_OPTIONS:-}"
    # exitcode=0: a child's leak report must not change what the test sees.
    export LSAN_OPTIONS="suppressions=$repo/tools/lsan.supp:print_suppressions=0:exitcode=0:${LSAN_OPTIONS:-}"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$logs/ubsan:${UBSAN_OPTIONS:-}"
    # Python objects through malloc, so ASan also sees our C code overrun a
    # Python buffer (pymalloc's arenas would hide it).
    export PYTHONMALLOC=malloc
else
    preload=$(gcc -print-file-name=libtsan.so)
    # An uninstrumented libmsquic hands work between its threads with atomics
    # TSan cannot see: every report with a libmsquic frame is noise then
    # (socket teardown, receive buffer reuse), so those are suppressed unless
    # msquic is instrumented too.
    cp tools/tsan.supp "$logs.supp"
    [ "${PYMSQUIC_SANITIZE_MSQUIC:-0}" = 0 ] && echo "race:libmsquic.so.2" >>"$logs.supp"
    supp=suppressions=$logs.supp:
    # exitcode=0: a child's report must not change what the test sees.
    export TSAN_OPTIONS="${supp}exitcode=0:halt_on_error=0:second_deadlock_stack=1:log_path=$logs/tsan:${TSAN_OPTIONS:-}"
    # TSan's shadow memory is what that test's RSS bound would measure.
    set -- --deselect tests/test_resilience.py::test_reader_that_stops_bounds_memory_and_blocks_the_writer "$@"
fi
for lib in $preload; do
    [ -f "$lib" ] || { echo "sanitize.sh: $lib not found (install gcc's sanitizer runtimes)" >&2; exit 1; }
done

start=$(date +%s)
# sh records its pid, then becomes env, then pytest: that pid names pytest's report.
sh -c 'echo $$ >"$1"; shift; exec "$@"' sh "$logs.pid" \
    env LD_PRELOAD="$preload" PYTHONPATH="$repo" "$python" -m pytest -p no:cacheprovider -q "$@"
status=$?
pytest_pid=$(cat "$logs.pid")
echo "sanitize.sh: pytest exited $status after $(( $(date +%s) - start )) s"

# Every report fails the run, except leaks found in child processes: tests
# start programs that exit with objects still open on purpose, and pymsquic
# leaves those to the OS after its exit teardown.
found=0
for f in $(find "$logs" -type f | sort); do
    echo "===== $f"
    cat "$f"
    if [ "${f##*.}" != "$pytest_pid" ] && grep -q "ERROR: LeakSanitizer" "$f" \
        && ! grep -q "ERROR: AddressSanitizer\|runtime error:" "$f"; then
        echo "sanitize.sh: (leaks of a child process: listed, not counted)"
    else
        found=$((found + 1))
    fi
done
if [ $found -gt 0 ]; then
    echo "sanitize.sh: $found sanitizer report(s) in $logs" >&2
    exit 1
fi
echo "sanitize.sh: no sanitizer report counted"
exit $status
