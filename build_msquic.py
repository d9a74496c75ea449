"""Build libmsquic and define the cffi module ``pymsquic._msquic``.

Two jobs live here, as in pynng:

1. ``locate_msquic()`` finds or builds libmsquic 2.5.x.  In order of preference:
   ``PYMSQUIC_MSQUIC_LIBRARY`` (a prebuilt ``libmsquic.so.2``, with
   ``PYMSQUIC_MSQUIC_INCLUDE`` naming its headers), ``PYMSQUIC_MSQUIC_SOURCE``
   (an msquic checkout with its quictls submodule), or the crates.io crate
   ``msquic`` at one pinned version, fetched by cargo.  Source builds go through
   the top-level CMakeLists.txt in Release and are cached under
   ``~/.cache/pymsquic/<version>-<options hash>/`` so a second install does not
   rebuild.
2. ``ffibuilder`` declares the out-of-line API-mode module: the MsQuic API table
   with its exact function-pointer types, the status codes (values filled in by
   the compiler) and the project's own flat records and trampolines from
   ``native/pymsquic.h``.  msquic's event structs stay opaque.

``PYMSQUIC_SANITIZE=address`` (AddressSanitizer with UndefinedBehaviorSanitizer)
or ``=thread`` (ThreadSanitizer) builds the extension's C code (``native/*.c``
and cffi's glue) instrumented; libmsquic stays the cached Release build.  The
mode is baked into the extension, and a build whose mode differs from the
extension already there rebuilds it, so the two never mix silently.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import NamedTuple

from cffi import FFI
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
NATIVE = HERE / "native"

MSQUIC_CRATE_VERSION = "2.5.1-beta"  # newest 2.5.x on crates.io (carries msquic 2.5.1)

# Options that change the produced library; they key the cache.  The superbuild
# (CMakeLists.txt) forces the rest: shared, logging off, quictls, no tools/tests.
CMAKE_OPTIONS = {"CMAKE_BUILD_TYPE": "Release"}
CACHE_LAYOUT = 1  # bump when the cached tree's layout changes


# PYMSQUIC_SANITIZE values and the -fsanitize= list each one means.
SANITIZERS = {"": "", "address": "address,undefined", "thread": "thread"}


def sanitize_mode() -> str:
    """The sanitizer build asked for by ``PYMSQUIC_SANITIZE`` ("" for none)."""
    mode = os.environ.get("PYMSQUIC_SANITIZE", "").strip().lower()
    if mode in ("none", "0"):
        mode = ""
    if mode not in SANITIZERS:
        choices = ", ".join(repr(m) for m in SANITIZERS if m)
        raise SystemExit(f"PYMSQUIC_SANITIZE={mode!r} is not supported; use {choices} or leave it unset")
    return mode


def sanitize_flags(mode: str) -> list[str]:
    """Compiler and linker flags of a sanitizer build (the same list for both)."""
    if not mode:
        return []
    # -O1 after the default -O2 wins: readable stacks at a bearable speed.
    return [f"-fsanitize={SANITIZERS[mode]}", "-fno-omit-frame-pointer", "-g", "-O1"]


def msquic_cmake_options(mode: str) -> dict[str, str]:
    """CMake options of libmsquic: Release, instrumented too with
    ``PYMSQUIC_SANITIZE_MSQUIC=1`` (its own cache folder, a full build).

    address: msquic's own QUIC_ENABLE_SANITIZERS (ASan, LSan, UBSan, and its
    object pools off, so ASan sees every msquic object's lifetime).
    thread: -fsanitize=thread, so TSan sees msquic's atomics and locks.
    quictls is never instrumented.
    """
    options = dict(CMAKE_OPTIONS)
    if mode and os.environ.get("PYMSQUIC_SANITIZE_MSQUIC", "") not in ("", "0"):
        if mode == "address":
            options["QUIC_ENABLE_SANITIZERS"] = "ON"
        else:
            flags = " ".join(sanitize_flags(mode))
            options.update(CMAKE_C_FLAGS=flags, CMAKE_CXX_FLAGS=flags,
                           CMAKE_SHARED_LINKER_FLAGS=f"-fsanitize={SANITIZERS[mode]}")
    return options


def without_source_paths(options: dict[str, str], source: Path) -> dict[str, str]:
    """``options`` plus compiler flags that write msquic's source folder as ``msquic`` into the
    library (its asserts carry ``__FILE__``), so that no build-host path is baked in."""
    result = dict(options)
    remap = f"-ffile-prefix-map={source}=msquic"
    for name in ("CMAKE_C_FLAGS", "CMAKE_CXX_FLAGS"):
        result[name] = f"{result.get(name, '')} {remap}".strip()
    return result


def built_sanitize_mode(ext_file: Path) -> str | None:
    """The mode baked into an already built extension, None if unknown."""
    try:
        data = ext_file.read_bytes()
    except OSError:
        return None
    found = re.search(rb"PYMSQUIC_SANITIZE=(\w*)\0", data)
    return found.group(1).decode() if found else None


def tool_env() -> dict[str, str]:
    """The environment for cargo and CMake: without a preloaded sanitizer runtime.

    A test run under tools/sanitize.sh preloads libasan into every child; rustc
    (linked with its own allocator) then dies with SIGSEGV, and build tools are
    not what is being checked anyway.
    """
    env = dict(os.environ)
    kept = [lib for lib in env.get("LD_PRELOAD", "").replace(":", " ").split()
            if not re.search(r"lib(a|t|ub|l)san\.so", lib)]
    if kept:
        env["LD_PRELOAD"] = " ".join(kept)
    else:
        env.pop("LD_PRELOAD", None)
    return env


def log(msg: str) -> None:
    print(f"[pymsquic build] {msg}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    if os.environ.get("PYMSQUIC_CACHE_DIR"):
        return Path(os.environ["PYMSQUIC_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(xdg) / "pymsquic"


class Msquic(NamedTuple):
    include_dir: Path
    library: Path  # the file to bundle as libmsquic.so.2
    source: Path | None = None  # msquic's source tree (its licences), None for a prebuilt library


def locate_msquic() -> Msquic:
    """Return the headers and library to build against, building them if needed."""
    prebuilt = os.environ.get("PYMSQUIC_MSQUIC_LIBRARY")
    if prebuilt:
        include = os.environ.get("PYMSQUIC_MSQUIC_INCLUDE")
        if not include:
            raise SystemExit("PYMSQUIC_MSQUIC_LIBRARY needs PYMSQUIC_MSQUIC_INCLUDE (the folder with msquic.h)")
        ms = Msquic(Path(include).expanduser().resolve(), Path(prebuilt).expanduser().resolve())
        for needed in (ms.library, ms.include_dir / "msquic.h"):
            if not needed.is_file():
                raise SystemExit(f"prebuilt libmsquic: {needed} does not exist")
        log(f"using prebuilt {ms.library}")
        # PYMSQUIC_MSQUIC_SOURCE beside a prebuilt library only names its licence texts.
        source = os.environ.get("PYMSQUIC_MSQUIC_SOURCE")
        return ms._replace(source=Path(source).expanduser().resolve()) if source else ms
    source = os.environ.get("PYMSQUIC_MSQUIC_SOURCE")
    if source:
        return build_from_source(Path(source).expanduser().resolve(), origin=f"tree:{Path(source).resolve()}")
    return build_from_source(fetch_crate(), origin=f"crate:{MSQUIC_CRATE_VERSION}")


def fetch_crate() -> Path:
    """Unpack the pinned ``msquic`` crate into cargo's cache and return its root."""
    if not shutil.which("cargo"):
        raise SystemExit(
            "cargo is needed to fetch msquic's source (crate msquic "
            f"{MSQUIC_CRATE_VERSION}); install Rust's cargo, or set PYMSQUIC_MSQUIC_SOURCE "
            "or PYMSQUIC_MSQUIC_LIBRARY"
        )
    manifest_dir = cache_root() / "crate-fetch" / MSQUIC_CRATE_VERSION
    (manifest_dir / "src").mkdir(parents=True, exist_ok=True)
    (manifest_dir / "src" / "lib.rs").touch()
    (manifest_dir / "Cargo.toml").write_text(
        textwrap.dedent(f"""\
            [package]
            name = "pymsquic-fetch"
            version = "0.0.0"
            edition = "2021"

            [dependencies]
            msquic = {{ version = "={MSQUIC_CRATE_VERSION}", default-features = false }}
            """)
    )
    manifest = str(manifest_dir / "Cargo.toml")
    log(f"msquic {MSQUIC_CRATE_VERSION}'s source: cargo fetch (cached after the first time)")
    subprocess.run(["cargo", "fetch", "--quiet", "--manifest-path", manifest], check=True, env=tool_env())
    meta = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--manifest-path", manifest],
        check=True, capture_output=True, text=True, env=tool_env(),
    )
    for package in json.loads(meta.stdout)["packages"]:
        if package["name"] == "msquic":
            return Path(package["manifest_path"]).parent
    raise SystemExit("cargo metadata did not list the msquic crate")


# What the libmsquic build runs, and the Debian package that provides each. quictls's
# Configure is a perl script; msquic is C and C++ (CMake checks for both compilers).
BUILD_TOOLS = (
    ("cmake", ("cmake",), "cmake"),
    ("perl", ("perl",), "perl"),
    ("a C compiler", ("CC", "cc", "gcc", "clang"), "gcc"),
    ("a C++ compiler", ("CXX", "c++", "g++", "clang++"), "g++"),
    ("make or ninja", ("make", "ninja"), "make"),
)


def check_build_tools() -> None:
    """Stop with one line naming the Debian package of each tool missing for a source build.

    Without this, a missing cmake is a bare ``FileNotFoundError`` and a missing perl an
    error deep inside quictls's build log.  ``CC``/``CXX`` in the environment count as
    the compilers when they name a program on PATH.
    """
    missing: list[tuple[str, str]] = []
    for what, candidates, package in BUILD_TOOLS:
        found = False
        for name in candidates:
            program = os.environ.get(name, "").split()[:1] if name in ("CC", "CXX") else [name]
            if program and shutil.which(program[0]):
                found = True
                break
        if not found:
            missing.append((what, package))
    if missing:
        names = ", ".join(what for what, _ in missing)
        packages = " ".join(dict.fromkeys(package for _, package in missing))
        raise SystemExit(f"building libmsquic needs {names}, not found on PATH: "
                         f"install it (Debian: apt-get install {packages}), or set PYMSQUIC_MSQUIC_LIBRARY")


def source_version(source: Path) -> str:
    text = (source / "src" / "inc" / "msquic.ver").read_text()
    parts = [re.search(rf"#define VER_{p} (\d+)", text) for p in ("MAJOR", "MINOR", "PATCH")]
    if not all(parts):
        raise SystemExit(f"cannot read msquic's version from {source}/src/inc/msquic.ver")
    return ".".join(m.group(1) for m in parts)  # type: ignore[union-attr]


def build_from_source(source: Path, origin: str) -> Msquic:
    if not (source / "src" / "inc" / "msquic.h").is_file():
        raise SystemExit(f"{source} is not an msquic source tree (no src/inc/msquic.h)")
    if not (source / "submodules" / "quictls" / "Configure").is_file():
        raise SystemExit(f"{source} lacks submodules/quictls (run git submodule update --init)")
    version = source_version(source)
    options = without_source_paths(msquic_cmake_options(sanitize_mode()), source)
    key_material = json.dumps(
        {"origin": origin, "options": options, "layout": CACHE_LAYOUT,
         "superbuild": hashlib.sha256((HERE / "CMakeLists.txt").read_bytes()).hexdigest()},
        sort_keys=True,
    )
    prefix = cache_root() / f"{version}-{hashlib.sha256(key_material.encode()).hexdigest()[:12]}"
    result = Msquic(prefix / "include", prefix / "lib" / "libmsquic.so.2", source)
    stamp = prefix / ".complete"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{prefix}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel installs wait for one build
        if stamp.is_file() and result.library.is_file():
            log(f"libmsquic {version} from cache {prefix}")
            return result
        check_build_tools()
        log(f"building libmsquic {version} from {source} into {prefix} "
            "(once, then cached; `pip install -v` shows the compiler's progress)")
        started = time.monotonic()
        shutil.rmtree(prefix, ignore_errors=True)
        build_dir = prefix / "build"
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        defines = [f"-D{k}={v}" for k, v in options.items()]
        log("1/3 configuring (cmake)")
        subprocess.run(
            ["cmake", "-S", str(HERE), "-B", str(build_dir), *generator, *defines,
             f"-DMSQUIC_SOURCE_DIR={source}", f"-DCMAKE_INSTALL_PREFIX={prefix}"],
            check=True, env=tool_env(),
        )
        log(f"2/3 compiling quictls and msquic ({time.monotonic() - started:.0f} s so far)")
        subprocess.run(["cmake", "--build", str(build_dir), "-j", str(os.cpu_count() or 2)], check=True,
                       env=tool_env())
        log(f"3/3 installing into {prefix} ({time.monotonic() - started:.0f} s so far)")
        subprocess.run(["cmake", "--install", str(build_dir)], check=True, env=tool_env())
        shutil.rmtree(build_dir)
        stamp.write_text(origin + "\n")
        log(f"libmsquic {version} built in {time.monotonic() - started:.0f} s")
    return result


# ---------------------------------------------------------------------------
# The cffi module
# ---------------------------------------------------------------------------

# msquic's own declarations.  Event structs, QUIC_SETTINGS, QUIC_ADDR and the
# credential config are opaque here: C helpers in native/ fill them from the
# project's flat records, so no bitfield layout is guessed in Python.
MSQUIC_CDEF = """
typedef unsigned int QUIC_STATUS;
typedef unsigned char BOOLEAN;
typedef uint64_t QUIC_UINT62;
typedef int... QUIC_ADDRESS_FAMILY;
typedef struct QUIC_HANDLE *HQUIC;

typedef struct QUIC_BUFFER { uint32_t Length; uint8_t *Buffer; } QUIC_BUFFER;

typedef enum QUIC_EXECUTION_PROFILE {
    QUIC_EXECUTION_PROFILE_LOW_LATENCY = ...,
    QUIC_EXECUTION_PROFILE_TYPE_MAX_THROUGHPUT = ...,
    QUIC_EXECUTION_PROFILE_TYPE_SCAVENGER = ...,
    QUIC_EXECUTION_PROFILE_TYPE_REAL_TIME = ...,
} QUIC_EXECUTION_PROFILE;

typedef struct QUIC_REGISTRATION_CONFIG {
    const char *AppName;
    QUIC_EXECUTION_PROFILE ExecutionProfile;
} QUIC_REGISTRATION_CONFIG;

typedef enum QUIC_CONNECTION_SHUTDOWN_FLAGS {
    QUIC_CONNECTION_SHUTDOWN_FLAG_NONE = ...,
    QUIC_CONNECTION_SHUTDOWN_FLAG_SILENT = ...,
} QUIC_CONNECTION_SHUTDOWN_FLAGS;
typedef enum QUIC_STREAM_OPEN_FLAGS { QUIC_STREAM_OPEN_FLAG_NONE = ..., ... } QUIC_STREAM_OPEN_FLAGS;
typedef enum QUIC_STREAM_START_FLAGS { QUIC_STREAM_START_FLAG_NONE = ..., ... } QUIC_STREAM_START_FLAGS;
typedef enum QUIC_STREAM_SHUTDOWN_FLAGS {
    QUIC_STREAM_SHUTDOWN_FLAG_NONE = ...,
    QUIC_STREAM_SHUTDOWN_FLAG_GRACEFUL = ...,
    QUIC_STREAM_SHUTDOWN_FLAG_ABORT_SEND = ...,
    QUIC_STREAM_SHUTDOWN_FLAG_ABORT_RECEIVE = ...,
    ...
} QUIC_STREAM_SHUTDOWN_FLAGS;
typedef enum QUIC_SEND_FLAGS { QUIC_SEND_FLAG_NONE = ..., ... } QUIC_SEND_FLAGS;
typedef enum QUIC_SEND_RESUMPTION_FLAGS { QUIC_SEND_RESUMPTION_FLAG_NONE = ..., ... } QUIC_SEND_RESUMPTION_FLAGS;
typedef enum QUIC_TLS_ALERT_CODES { QUIC_TLS_ALERT_CODE_SUCCESS = ..., ... } QUIC_TLS_ALERT_CODES;

typedef struct QUIC_SETTINGS QUIC_SETTINGS;
typedef struct QUIC_CREDENTIAL_CONFIG QUIC_CREDENTIAL_CONFIG;
typedef union QUIC_ADDR QUIC_ADDR;
typedef struct QUIC_LISTENER_EVENT QUIC_LISTENER_EVENT;
typedef struct QUIC_CONNECTION_EVENT QUIC_CONNECTION_EVENT;
typedef struct QUIC_STREAM_EVENT QUIC_STREAM_EVENT;
typedef QUIC_STATUS (*QUIC_LISTENER_CALLBACK_HANDLER)(HQUIC, void *, QUIC_LISTENER_EVENT *);
typedef QUIC_STATUS (*QUIC_CONNECTION_CALLBACK_HANDLER)(HQUIC, void *, QUIC_CONNECTION_EVENT *);
typedef QUIC_STATUS (*QUIC_STREAM_CALLBACK_HANDLER)(HQUIC, void *, QUIC_STREAM_EVENT *);

typedef struct QUIC_API_TABLE {
    void (*SetContext)(HQUIC, void *);
    void *(*GetContext)(HQUIC);
    void (*SetCallbackHandler)(HQUIC, void *, void *);
    QUIC_STATUS (*SetParam)(HQUIC, uint32_t, uint32_t, const void *);
    QUIC_STATUS (*GetParam)(HQUIC, uint32_t, uint32_t *, void *);
    QUIC_STATUS (*RegistrationOpen)(const QUIC_REGISTRATION_CONFIG *, HQUIC *);
    void (*RegistrationClose)(HQUIC);
    void (*RegistrationShutdown)(HQUIC, QUIC_CONNECTION_SHUTDOWN_FLAGS, QUIC_UINT62);
    QUIC_STATUS (*ConfigurationOpen)(HQUIC, const QUIC_BUFFER *const, uint32_t, const QUIC_SETTINGS *,
                                     uint32_t, void *, HQUIC *);
    void (*ConfigurationClose)(HQUIC);
    QUIC_STATUS (*ConfigurationLoadCredential)(HQUIC, const QUIC_CREDENTIAL_CONFIG *);
    QUIC_STATUS (*ListenerOpen)(HQUIC, QUIC_LISTENER_CALLBACK_HANDLER, void *, HQUIC *);
    void (*ListenerClose)(HQUIC);
    QUIC_STATUS (*ListenerStart)(HQUIC, const QUIC_BUFFER *const, uint32_t, const QUIC_ADDR *);
    void (*ListenerStop)(HQUIC);
    QUIC_STATUS (*ConnectionOpen)(HQUIC, QUIC_CONNECTION_CALLBACK_HANDLER, void *, HQUIC *);
    void (*ConnectionClose)(HQUIC);
    void (*ConnectionShutdown)(HQUIC, QUIC_CONNECTION_SHUTDOWN_FLAGS, QUIC_UINT62);
    QUIC_STATUS (*ConnectionStart)(HQUIC, HQUIC, QUIC_ADDRESS_FAMILY, const char *, uint16_t);
    QUIC_STATUS (*ConnectionSetConfiguration)(HQUIC, HQUIC);
    QUIC_STATUS (*ConnectionSendResumptionTicket)(HQUIC, QUIC_SEND_RESUMPTION_FLAGS, uint16_t, const uint8_t *);
    QUIC_STATUS (*StreamOpen)(HQUIC, QUIC_STREAM_OPEN_FLAGS, QUIC_STREAM_CALLBACK_HANDLER, void *, HQUIC *);
    void (*StreamClose)(HQUIC);
    QUIC_STATUS (*StreamStart)(HQUIC, QUIC_STREAM_START_FLAGS);
    QUIC_STATUS (*StreamShutdown)(HQUIC, QUIC_STREAM_SHUTDOWN_FLAGS, QUIC_UINT62);
    QUIC_STATUS (*StreamSend)(HQUIC, const QUIC_BUFFER *const, uint32_t, QUIC_SEND_FLAGS, void *);
    void (*StreamReceiveComplete)(HQUIC, uint64_t);
    QUIC_STATUS (*StreamReceiveSetEnabled)(HQUIC, BOOLEAN);
    QUIC_STATUS (*DatagramSend)(HQUIC, const QUIC_BUFFER *const, uint32_t, QUIC_SEND_FLAGS, void *);
    QUIC_STATUS (*ConnectionResumptionTicketValidationComplete)(HQUIC, BOOLEAN);
    QUIC_STATUS (*ConnectionCertificateValidationComplete)(HQUIC, BOOLEAN, QUIC_TLS_ALERT_CODES);
    QUIC_STATUS (*ConnectionOpenInPartition)(HQUIC, uint16_t, QUIC_CONNECTION_CALLBACK_HANDLER, void *, HQUIC *);
    ...;
} QUIC_API_TABLE;

#define QUIC_PARAM_GLOBAL_LIBRARY_VERSION ...
#define QUIC_PARAM_LISTENER_LOCAL_ADDRESS ...
#define QUIC_CREDENTIAL_FLAG_CLIENT ...
#define QUIC_CREDENTIAL_FLAG_NO_CERTIFICATE_VALIDATION ...
#define QUIC_CREDENTIAL_FLAG_REQUIRE_CLIENT_AUTHENTICATION ...
#define QUIC_CREDENTIAL_FLAG_SET_CA_CERTIFICATE_FILE ...
#define QUIC_CREDENTIAL_FLAG_USE_PORTABLE_CERTIFICATES ...
#define QUIC_CREDENTIAL_FLAG_INDICATE_CERTIFICATE_RECEIVED ...
"""

# Every status code msquic_posix.h defines; the compiler supplies the values.
STATUS_NAMES = [
    "SUCCESS", "PENDING", "CONTINUE", "OUT_OF_MEMORY", "INVALID_PARAMETER", "INVALID_STATE",
    "NOT_SUPPORTED", "NOT_FOUND", "FILE_NOT_FOUND", "BUFFER_TOO_SMALL", "HANDSHAKE_FAILURE",
    "ABORTED", "ADDRESS_IN_USE", "INVALID_ADDRESS", "CONNECTION_TIMEOUT", "CONNECTION_IDLE",
    "INTERNAL_ERROR", "CONNECTION_REFUSED", "PROTOCOL_ERROR", "VER_NEG_ERROR", "UNREACHABLE",
    "TLS_ERROR", "USER_CANCELED", "ALPN_NEG_FAILURE", "STREAM_LIMIT_REACHED", "ALPN_IN_USE",
    "ADDRESS_NOT_AVAILABLE", "CLOSE_NOTIFY", "BAD_CERTIFICATE", "UNSUPPORTED_CERTIFICATE",
    "REVOKED_CERTIFICATE", "EXPIRED_CERTIFICATE", "UNKNOWN_CERTIFICATE", "REQUIRED_CERTIFICATE",
    "CERT_EXPIRED", "CERT_UNTRUSTED_ROOT", "CERT_NO_CERT",
]
STATUS_CDEF = "".join(f"#define QUIC_STATUS_{name} ...\n" for name in STATUS_NAMES)


def project_cdef() -> str:
    """The part of native/pymsquic.h between the CFFI markers, shared with the C side."""
    header = (NATIVE / "pymsquic.h").read_text()
    match = re.search(r"/\* CFFI-BEGIN \*/(.*)/\* CFFI-END \*/", header, re.S)
    if not match:
        raise SystemExit("native/pymsquic.h lacks its CFFI-BEGIN/CFFI-END markers")
    return match.group(1)


NATIVE_SOURCES = sorted(str(p.relative_to(HERE)) for p in NATIVE.glob("*.c"))

GLUE_CDEF = """
extern const QUIC_API_TABLE *pmq_api;
static const char *const pmq_build_sanitize;
extern "Python+C" int pmq_py_listener_hook(uint64_t hook_id, uint32_t event, const pmq_conn_info *info);
"""

SANITIZE = sanitize_mode()
# PYMSQUIC_DEBUG_MAGIC=1 (debugging only, off by default): the native layer aborts with a
# message when a released stream/connection is used, or a callback comes for another handle.
DEBUG_MAGIC_FLAGS = ["-DPMQ_DEBUG_MAGIC"] if os.environ.get("PYMSQUIC_DEBUG_MAGIC", "") not in ("", "0") else []

ffibuilder = FFI()
ffibuilder.cdef(MSQUIC_CDEF + STATUS_CDEF + project_cdef() + GLUE_CDEF)
# Include and library folders are added by BuildExtWithMsquic once libmsquic is
# located, so that importing this file never starts a build.
ffibuilder.set_source(
    "pymsquic._msquic",
    # The marker string lets the next build see which mode this one had.
    '#include "pymsquic.h"\n'
    f'static const char *const pmq_build_sanitize = "PYMSQUIC_SANITIZE={SANITIZE or "none"}";\n',
    sources=NATIVE_SOURCES,
    include_dirs=[str(NATIVE)],
    extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-Wno-unused-function", *sanitize_flags(SANITIZE),
                        *DEBUG_MAGIC_FLAGS],
    # RUNPATH $ORIGIN alone finds the bundled libmsquic.so.2; -s strips the release build.
    extra_link_args=["-Wl,-rpath,$ORIGIN", "-Wl,--enable-new-dtags", "-l:libmsquic.so.2", "-lpthread",
                     *(sanitize_flags(SANITIZE) or ["-s"])],
)

# The licences of what the wheel bundles, copied from msquic's fetched source at build time.
NOTICE_NAME = "THIRD_PARTY_NOTICES"
NOTICE_LICENCES = [
    ("msquic", "MIT", "LICENSE"),
    ("quictls (OpenSSL fork, libcrypto/libssl linked into libmsquic)", "Apache-2.0",
     "submodules/quictls/LICENSE.txt"),
]


def third_party_notice(source: Path) -> str:
    """The notice for libmsquic.so.2: msquic's and quictls' licence texts from ``source``."""
    parts = ["pymsquic bundles libmsquic.so.2, built from the following projects.\n"]
    for name, spdx, relative in NOTICE_LICENCES:
        path = source / relative
        if not path.is_file():
            raise SystemExit(f"licence text missing from msquic's source: {path}")
        parts.append(f"\n{'=' * 78}\n{name} ({spdx}), from {relative}:\n{'=' * 78}\n\n{path.read_text()}")
    return "".join(parts)


def host_link_flag(flag: str) -> bool:
    """A flag LDSHARED carries from the build host's Python: its lib folder as -L or rpath.

    pyenv's LDSHARED has ``-L<prefix>/lib -Wl,-rpath,<prefix>/lib``; the rpath would
    come before $ORIGIN in the extension's RUNPATH and auditwheel keeps it.
    """
    return flag.startswith(("-Wl,-rpath", "-Wl,-R", "-R")) or (flag.startswith("-L") and flag != "-L")


def build_key(ms: Msquic) -> str:
    """A hash of everything the extension is compiled from that build_ext's mtime check misses:
    libmsquic's headers and library (another build may be older), the native sources, the flags."""
    digest = hashlib.sha256()
    files = sorted(ms.include_dir.rglob("*.h")) + [ms.library] + sorted(NATIVE.glob("*.[ch]"))
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(json.dumps([SANITIZE, DEBUG_MAGIC_FLAGS, ffibuilder._assigned_source[3]],
                             sort_keys=True, default=str).encode())
    return digest.hexdigest()


class BuildExtWithMsquic(build_ext):
    """build_ext that first locates (or builds) libmsquic and bundles it beside the extension."""

    def run(self) -> None:
        ms = locate_msquic()
        key = build_key(ms)
        for ext in self.extensions:
            ext.include_dirs.append(str(ms.include_dir))
            ext.library_dirs.append(str(ms.library.parent))
            # build_ext skips an extension newer than its sources: not when it
            # was built with another sanitizer mode.
            ext_file = Path(self.get_ext_fullpath(ext.name))
            built = built_sanitize_mode(ext_file)
            if ext_file.exists() and built != (SANITIZE or "none"):
                log(f"rebuilding {ext.name}: it was built with PYMSQUIC_SANITIZE={built or 'unknown'}, "
                    f"this build is {SANITIZE or 'none'}")
                self.force = True
            stamp = self.key_stamp(ext.name)
            if ext_file.exists() and not self.force and (not stamp.is_file() or stamp.read_text() != key):
                log(f"rebuilding {ext.name}: libmsquic, its headers, native/ or the flags changed "
                    "since it was built (or its stamp is missing)")
                self.force = True
        if SANITIZE:
            log(f"PYMSQUIC_SANITIZE={SANITIZE}: native code built with {' '.join(sanitize_flags(SANITIZE))}")
        super().run()
        for ext in self.extensions:
            dest = Path(self.get_ext_fullpath(ext.name)).parent / "libmsquic.so.2"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ms.library, dest)
            log(f"bundled {ms.library} as {dest}")
            notice = dest.parent / NOTICE_NAME
            if ms.source is not None:
                notice.write_text(third_party_notice(ms.source))
                log(f"wrote {notice} from {ms.source}")
            else:
                log(f"no msquic source known for a prebuilt library: {notice} not written "
                    "(set PYMSQUIC_MSQUIC_SOURCE to its source tree to ship its licences)")
            stamp = self.key_stamp(ext.name)
            stamp.parent.mkdir(parents=True, exist_ok=True)
            stamp.write_text(key)

    def key_stamp(self, name: str) -> Path:
        """Where the build key of the extension built last from this tree is kept."""
        # In build_temp, not beside the module, so that it stays out of the wheel; one per
        # target file, as --inplace and a wheel build share build_temp.
        target = hashlib.sha256(str(Path(self.get_ext_fullpath(name)).resolve()).encode()).hexdigest()[:12]
        return Path(self.build_temp) / f"{name}-{target}.build-key"

    def build_extensions(self) -> None:
        # The extension's only RUNPATH is $ORIGIN: drop the host Python's lib folder from LDSHARED.
        linker = list(self.compiler.linker_so)
        kept = [flag for flag in linker if not host_link_flag(flag)]
        if kept != linker:
            log(f"link without the host's {' '.join(f for f in linker if host_link_flag(f))}")
            self.compiler.set_executable("linker_so", kept)
        super().build_extensions()


if __name__ == "__main__":
    # `python build_msquic.py`: build libmsquic (or reuse the cache) and print where it is.
    found = locate_msquic()
    print(f"include: {found.include_dir}\nlibrary: {found.library}")
