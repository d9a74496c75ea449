"""Runs every implementation's server and client in separate processes on loopback,
and turns what they report into one table, a JSON file and a chart."""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.protocol import FAIRNESS_IMPLS, HS_IMPLS, HS_WORKLOADS

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build" / "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
UNITS = {"download": "Gbit/s", "upload": "Gbit/s", "rps": "req/s", "latency": "req/s", "hps": "hs/s",
         "fairness": "req/s", **{w: "conn/s" for w in HS_WORKLOADS}}


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ---- implementations -------------------------------------------------------------

@dataclass
class Impl:
    name: str
    label: str
    command: list[str] = field(default_factory=list)  # prefix; role and options follow
    env: dict[str, str] = field(default_factory=dict)
    skipped: str = ""  # why it cannot run here
    idle: bool = True  # supports the idle-connections memory measurement
    only: tuple[str, ...] = ()  # the workloads it runs, if not all

    def runs(self, workload: str) -> bool:
        if workload == "fairness" and self.name not in FAIRNESS_IMPLS:
            return False
        if workload in HS_WORKLOADS and self.name not in HS_IMPLS:
            return False
        return not self.only or workload in self.only

    def cmd(self, role: str, *options: str) -> list[str]:
        return [*self.command, role, *options]


@dataclass
class Pair:
    """One client implementation against one server implementation: the rows' unit.
    An implementation's own pair has its name; a mixed one is named CLIENT->SERVER."""

    name: str
    label: str
    client: Impl
    server: Impl
    idle: bool = False  # the idle-connections measurement (own pairs only)

    def runs(self, workload: str) -> bool:
        return self.client.runs(workload) and self.server.runs(workload)

    @property
    def skipped(self) -> str:
        return self.client.skipped or self.server.skipped


def own_pair(impl: Impl, server: Impl | None = None) -> Pair:
    """The implementation's client against its own server (or against --server's)."""
    return Pair(impl.name, impl.label, impl, server or impl, idle=impl.idle and server is None)


def cross_pairs(native: Impl, impl: Impl) -> list[Pair]:
    """--cross: the native client against impl's server (server-only) and impl's client
    against the native server (client-only), both next to the native/native row."""
    return [Pair(f"{native.name}->{impl.name}", f"native client -> {impl.label} server", native, impl),
            Pair(f"{impl.name}->{native.name}", f"{impl.label} client -> native server", impl, native)]


def crosses(impl: Impl) -> bool:
    """Whether --cross pairs impl with the native one: every full implementation (both
    roles, every workload it can) that is not a native one."""
    return not impl.name.startswith("native") and not impl.only


def python_impl(name: str, label: str, python: str = sys.executable, **env: str) -> Impl:
    return Impl(name, label, [python, "-m", "bench.run", name], {"PYTHONPATH": str(REPO), **env})


def build_native() -> Impl:
    """Compile bench/native/quicperf.c against the libmsquic pymsquic was built with."""
    sys.path.insert(0, str(REPO))
    from build_msquic import locate_msquic

    ms = locate_msquic()  # the cached build: no rebuild
    binary = BUILD / "quicperf"
    source = REPO / "bench" / "native" / "quicperf.c"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        BUILD.mkdir(parents=True, exist_ok=True)
        lib_dir = ms.library.parent
        subprocess.run(["cc", "-O2", "-o", str(binary), str(source), f"-I{ms.include_dir}", f"-L{lib_dir}",
                        "-l:libmsquic.so.2", f"-Wl,-rpath,{lib_dir}", "-lpthread"], check=True)
    # the execution mode pinned: a QUICPERF_EXECUTION in the caller's environment must not leak in
    return Impl("native", "native C (libmsquic)", [str(binary)], {"QUICPERF_EXECUTION": "threads"}, idle=False)


def variant(impl: Impl, name: str, label: str, **env: str) -> Impl:
    """The same implementation with another stream scheduling scheme, for the fairness row only."""
    return Impl(name, label, impl.command, {**impl.env, **env}, impl.skipped, idle=False, only=("fairness",))


def find_python312() -> str | None:
    """aiopquic needs Python >= 3.12: look for one beside the machine's (pyenv shims
    may name versions that are not active, so each candidate is tried)."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [str(v / "bin" / "python3") for v in sorted(pyenv.glob("3.1[2-9]*"), reverse=True)]
    candidates += [p for p in (shutil.which("python3.13"), shutil.which("python3.12")) if p]
    for candidate in candidates:
        probe = subprocess.run([candidate, "-c", "import sys, venv; assert sys.version_info >= (3, 12)"],
                               capture_output=True)
        if probe.returncode == 0:
            return candidate
    return None


def aiopquic_impl() -> Impl:
    python = find_python312()
    if python is None:
        return Impl("aiopquic", "aiopquic", skipped="needs Python >= 3.12, none found")
    venv = Path.home() / ".cache" / "pymsquic" / "bench-aiopquic"
    venv_python = venv / "bin" / "python"
    if not venv_python.exists():
        log(f"creating {venv} with {python} for aiopquic")
        made = subprocess.run([python, "-m", "venv", str(venv)], capture_output=True, text=True)
        if made.returncode != 0:
            return Impl("aiopquic", "aiopquic", skipped=f"venv failed: {made.stderr.strip()[-200:]}")
    probe = subprocess.run([str(venv_python), "-c", "import aiopquic"], capture_output=True)
    if probe.returncode != 0:
        install = subprocess.run([str(venv_python), "-m", "pip", "install", "-q", "aiopquic"],
                                 capture_output=True, text=True)
        if install.returncode != 0:
            return Impl("aiopquic", "aiopquic", skipped=f"pip install failed: {install.stderr.strip()[-200:]}")
    return python_impl("aiopquic", "aiopquic (picoquic)", str(venv_python))


def loop_mode(name: str, program: str, label: str) -> Impl:
    """A pymsquic program in execution mode "loop" (PYMSQUIC_EXECUTION), as its own implementation."""
    impl = python_impl(program, label, PYMSQUIC_EXECUTION="loop")
    return Impl(name, label, impl.command, impl.env, idle=False)


def importable(module: str) -> bool:
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode == 0


def make_impls(names: list[str]) -> list[Impl]:
    impls = []
    for name in names:
        if name == "native":
            impls.append(build_native())
        elif name == "native-exec":
            # The same program with msquic's work on its main thread (msquic's custom execution).
            impl = build_native()
            impls.append(Impl(name, "native C, custom execution", impl.command, {"QUICPERF_EXECUTION": "custom"},
                              idle=False))
        elif name == "native-rr":
            impls.append(variant(build_native(), name, "native C, round-robin", QUICPERF_SCHEDULING="round_robin"))
        elif name == "pymsquic-asyncio-fifo":
            impls.append(variant(python_impl("pymsquic-asyncio", "", PYMSQUIC_EXECUTION="threads"), name,
                                 "pymsquic asyncio, FIFO", BENCH_STREAM_SCHEDULING="fifo"))
        elif name == "pymsquic-asyncio":
            # threads mode pinned, as the native pair's: a PYMSQUIC_EXECUTION set outside must not leak in
            impls.append(python_impl(name, "pymsquic asyncio", PYMSQUIC_EXECUTION="threads"))
        elif name == "pymsquic-asyncio-loop":
            # The same program with msquic's work on the event loop's thread (pymsquic.execution).
            impls.append(loop_mode(name, "pymsquic-asyncio", "pymsquic asyncio, loop mode"))
        elif name in ("pymsquic-asyncio-protocol", "pymsquic-asyncio-loop-protocol"):
            # The requests of rps and latency as StreamProtocol callback chains (conn.create_stream),
            # no task or future per request; the server is the same program's.
            loop = "loop" in name
            base = (loop_mode(name, "pymsquic-asyncio", "") if loop else
                    python_impl("pymsquic-asyncio", "", PYMSQUIC_EXECUTION="threads"))
            label = f"pymsquic asyncio{', loop mode' if loop else ''} (protocol client)"
            impls.append(Impl(name, label, base.command, {**base.env, "BENCH_ASYNCIO_CLIENT": "protocol"},
                              idle=False, only=("rps", "latency")))
        elif name == "pymsquic-blocking":
            impls.append(python_impl(name, "pymsquic blocking", PYMSQUIC_EXECUTION="threads"))
        elif name == "pymsquic-blocking-loop":
            # pymsquic.sync in loop mode: one native driver thread runs msquic's work.
            impls.append(loop_mode(name, "pymsquic-blocking", "pymsquic blocking, loop mode"))
        elif name in ("aioquic", "qh3"):
            impl = python_impl(name, name)
            if not importable(name):
                impl.skipped = f"{name} is not installed (pip install {name})"
            impls.append(impl)
        elif name == "aiopquic":
            impls.append(aiopquic_impl())
        else:
            raise SystemExit(f"unknown implementation {name!r}")
    return impls


# ---- measuring ------------------------------------------------------------------------

def cpu_of(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a process so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


@dataclass
class Row:
    impl: str
    workload: str
    value: float = 0.0
    unit: str = ""
    p50_ms: float | None = None
    p99_ms: float | None = None
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    elapsed_s: float = 0.0
    vs_native: float | None = None
    vs_aioquic: float | None = None
    error: str = ""
    connections: int = 0  # hs-*: connections that got their reply (p50/p99 are then time to first byte)
    resumed: int = 0
    early_data: int = 0
    runs: list[float] = field(default_factory=list)  # every run's value when --repeat > 1 (the row is their median)
    client: str = ""  # the implementations of the pair (impl is the pair's name)
    server: str = ""
    client_threads: int | None = None  # threads of the client process at its end, if it says (quicperf does)
    server_threads: int | None = None  # threads of the server process after the row


def free_udp_port() -> int:
    """A port for the server: not every implementation reports what port 0 bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Child:
    """A process that prints "ready PORT" once it listens and runs until its stdin closes."""

    def __init__(self, what: str, command: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "ready":
            self.stop()
            raise RuntimeError(f"{what} did not start")
        self.port = int(line[1])

    def stop(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(10)
        except Exception:
            self.proc.kill()
            self.proc.wait()


class Server(Child):
    def __init__(self, impl: Impl, certs: tuple[str, str]) -> None:
        cert, key = certs
        command = impl.cmd("server", "--port", str(free_udp_port()), "--cert", cert, "--key", key)
        super().__init__(f"{impl.name} server", command, {**os.environ, **impl.env})


def relay_for(server: Child, rtt_ms: float) -> Child:
    """bench/relay.py in front of the server: every datagram held rtt_ms / 2 each way."""
    return Child("relay", [sys.executable, "-m", "bench.relay", "--to-port", str(server.port), "--rtt-ms",
                           str(rtt_ms)], {**os.environ, "PYTHONPATH": str(REPO)})


def threads_of(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return None


def run_client(impl: Impl, server: Server, workload: str, duration: float,
               port: int | None = None) -> tuple[dict[str, Any], float]:
    env = {**os.environ, **impl.env}
    cpu_before = cpu_of(server.proc.pid)
    client = subprocess.run(impl.cmd("client", "--port", str(port or server.port), "--workload", workload,
                                     "--duration", str(duration)), env=env, capture_output=True, text=True,
                            timeout=duration + 120)
    server_cpu = cpu_of(server.proc.pid) - cpu_before
    if client.returncode != 0 or not client.stdout.strip():
        raise RuntimeError(f"client failed ({client.returncode}): {client.stderr.strip()[-300:]}")
    return json.loads(client.stdout.strip().splitlines()[-1]), server_cpu


def measure(pair: Pair, server: Server, workload: str, duration: float, port: int | None = None) -> Row:
    row = Row(pair.name, workload, unit=UNITS[workload], client=pair.client.name, server=pair.server.name)
    try:
        result, row.server_cpu_s = run_client(pair.client, server, workload, duration, port)
    except Exception as exc:  # one failing row must not sink the run
        row.error = str(exc)
        log(f"{pair.name} {workload}: {exc}")
        return row
    elapsed = result["elapsed"] or 1e-9
    row.elapsed_s, row.client_cpu_s = elapsed, result["cpu_s"]
    row.client_threads, row.server_threads = result.get("threads"), threads_of(server.proc.pid)
    if workload in ("download", "upload"):
        row.value = result["bytes"] * 8 / elapsed / 1e9
    elif workload == "hps":
        row.value = result["handshakes"] / elapsed
    elif workload in HS_WORKLOADS:
        row.value = result["handshakes"] / elapsed
        row.p50_ms, row.p99_ms = result["p50_us"] / 1000, result["p99_us"] / 1000
        row.connections = result["handshakes"]
        row.resumed, row.early_data = min(result["resumed"], row.connections), min(result["early_data"], row.connections)
    else:
        row.value = result["requests"] / elapsed
        row.p50_ms, row.p99_ms = result["p50_us"] / 1000, result["p99_us"] / 1000
    return row


def median_row(samples: list[Row]) -> Row:
    """One row from several runs of it: the median of each number (errors only if every run failed)."""
    good = [r for r in samples if not r.error]
    if not good:
        return samples[-1]
    row = Row(good[0].impl, good[0].workload, unit=good[0].unit, runs=[r.value for r in good], client=good[0].client,
              server=good[0].server)
    for name in ("client_threads", "server_threads"):
        counts = [getattr(r, name) for r in good if getattr(r, name) is not None]
        setattr(row, name, max(counts, default=None))
    for name in ("value", "p50_ms", "p99_ms", "client_cpu_s", "server_cpu_s", "elapsed_s", "connections", "resumed",
                 "early_data"):
        values = [getattr(r, name) for r in good if getattr(r, name) is not None]
        if values:
            setattr(row, name, statistics.median(values))
    if len(good) < len(samples):
        log(f"{row.impl} {row.workload}: {len(samples) - len(good)} of {len(samples)} runs failed; median of the rest")
    return row


def measure_idle(impl: Impl, server: Server) -> dict[str, Any]:
    """RSS that IDLE_CONNECTIONS idle connections cost the server and the client."""
    env = {**os.environ, **impl.env}
    time.sleep(0.5)
    before = rss_of(server.proc.pid)
    client = subprocess.Popen(impl.cmd("client", "--port", str(server.port), "--workload", "idle"), env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        result = json.loads(client.stdout.readline())
        time.sleep(0.5)
        server_delta = rss_of(server.proc.pid) - before
    finally:
        client.stdin.close()
        client.wait(30)
    per_1000 = 1000 / max(result["connections"], 1)
    return {"impl": impl.name, "connections": result["connections"],
            "server_kb_per_1000": round(server_delta * per_1000), "client_kb_per_1000":
            round(result["rss_delta_kb"] * per_1000)}


def make_certs(directory: str) -> tuple[str, str]:
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, pkcs12

    sys.path.insert(0, str(REPO))
    from pymsquic.configuration import generate_self_signed

    _, blob = generate_self_signed(("localhost", "127.0.0.1"), 30)
    key, cert, _ = pkcs12.load_key_and_certificates(blob, None)
    cert_path, key_path = Path(directory) / "cert.pem", Path(directory) / "key.pem"
    cert_path.write_bytes(cert.public_bytes(Encoding.PEM))
    key_path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return str(cert_path), str(key_path)


# ---- the run -----------------------------------------------------------------------------

def run(impl_names: list[str], workloads: list[str], duration: float, idle: bool, repeat: int = 1,
        rtt_ms: float = 0.0, server_name: str = "", cross: bool | list[str] = False) -> dict[str, Any]:
    """Every implementation's rows; with repeat > 1 the whole round runs that many times
    (each pair in turn, so a busy moment on the machine spreads over all of them) and
    each row is the median of its runs. With rtt_ms the hs-* workloads go through
    bench/relay.py, which adds that round-trip time. With server_name every client talks
    to that implementation's server instead of its own. With cross (which needs the
    native pair and adds it if missing) each full non-native implementation also runs
    against the native pair: native client -> its server, its client -> native server;
    cross as a list of names: only those (a client-only variant too)."""
    if cross and server_name:
        raise ValueError("--cross and --server do not go together: --cross pairs every implementation with native")
    if cross and "native" not in impl_names:
        impl_names = ["native", *impl_names]
    impls = make_impls(impl_names)
    other_server = make_impls([server_name])[0] if server_name else None
    native = next((i for i in impls if i.name == "native"), None)
    pairs: list[Pair] = []
    for impl in impls:
        pairs.append(own_pair(impl, other_server))
        chosen = impl.name in cross if isinstance(cross, list) else cross and crosses(impl)
        if chosen and native is not None and impl is not native:
            pairs += cross_pairs(native, impl)
    samples: dict[tuple[str, str], list[Row]] = {}
    memory: list[dict[str, Any]] = []
    failed: dict[str, str] = {}  # pairs whose server did not start
    with tempfile.TemporaryDirectory() as tmp:
        certs = make_certs(tmp)
        for round_ in range(repeat):
            for pair in pairs:
                if pair.skipped or pair.name in failed:
                    if round_ == 0 and pair.skipped:
                        log(f"skipping {pair.name}: {pair.skipped}")
                    continue
                log(f"{pair.label}: starting its server" + (f" (round {round_ + 1} of {repeat})" if repeat > 1 else ""))
                try:
                    server = Server(pair.server, certs)
                except Exception as exc:
                    failed[pair.name] = str(exc)
                    continue
                relay = None
                try:
                    if rtt_ms > 0 and any(w in HS_WORKLOADS and pair.runs(w) for w in workloads):
                        relay = relay_for(server, rtt_ms)
                    for workload in workloads:
                        if not pair.runs(workload):
                            continue
                        log(f"{pair.label}: {workload} ({duration:g} s)")
                        port = relay.port if relay is not None and workload in HS_WORKLOADS else None
                        samples.setdefault((pair.name, workload), []).append(
                            measure(pair, server, workload, duration, port))
                    if idle and pair.idle and round_ == 0:
                        log(f"{pair.label}: idle connections")
                        try:
                            memory.append(measure_idle(pair.client, server))
                        except Exception as exc:
                            log(f"{pair.name} idle: {exc}")
                finally:
                    if relay is not None:
                        relay.stop()
                    server.stop()
    rows = [median_row(runs) for runs in samples.values()]
    by_key = {(r.impl, r.workload): r for r in rows}
    for row in rows:
        for ref, attr in (("native", "vs_native"), ("aioquic", "vs_aioquic")):
            base = by_key.get((ref, row.workload))
            if base is not None and base.value and not row.error and ref != row.impl:
                setattr(row, attr, row.value / base.value)
    skipped = {p.name: p.skipped for p in pairs if p.skipped}
    return {
        "rows": [asdict(r) for r in rows],
        "memory": memory,
        "skipped": {**skipped, **failed},
        "labels": {p.name: p.label for p in pairs},
        "not_run": not_run(pairs, workloads, skipped),
        "duration_s": duration,
        "repeat": repeat,
        "hs_rtt_ms": rtt_ms,
        "server": server_name,
        "cross": cross,
        "hs_parallel": int(os.environ.get("BENCH_HS_PARALLEL", "1")),
        "machine": machine_facts(),
    }


def not_run(pairs: list[Pair], workloads: list[str], skipped: dict[str, str]) -> dict[str, str]:
    """The workloads asked for that a pair does not run, and why (fairness and hs-* are
    for some implementations only): the table says so instead of leaving them out."""
    reasons = {}
    for pair in pairs:
        missing = [w for w in workloads if not pair.runs(w)]
        if pair.name in skipped or not missing:
            continue
        why = []
        if pair.client.only or pair.server.only:
            only = pair.client.only or pair.server.only
            why.append(f"a variant for {', '.join(only)} only")
        if "fairness" in missing and not (pair.client.only or pair.server.only):
            why.append("fairness: only the implementations with a stream scheduling setting (protocol.FAIRNESS_IMPLS)")
        if any(w in HS_WORKLOADS for w in missing) and not (pair.client.only or pair.server.only):
            why.append("hs-*: its bench adapter has no session tickets (protocol.HS_IMPLS)")
        reasons[pair.name] = f"{', '.join(missing)} ({'; '.join(why)})"
    return reasons


def machine_facts() -> dict[str, str]:
    model = "unknown"
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True).stdout.strip()
    sys.path.insert(0, str(REPO))
    import pymsquic

    return {"cpu": model, "cores": str(os.cpu_count()), "python": platform.python_version(),
            "kernel": platform.release(), "msquic": pymsquic.msquic_version(), "git": revision or "unknown",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


# ---- reporting -------------------------------------------------------------------------------

def spread(row: dict[str, Any]) -> str:
    """The runs' lowest and highest rate and the half-range against the median (the row's
    rate): empty for a single run."""
    runs = row.get("runs") or []
    if len(runs) < 2:
        return ""
    low, high = min(runs), max(runs)
    half = f" (±{(high - low) / 2 / row['value']:.0%})" if row["value"] else ""
    if row["unit"] == "Gbit/s":
        return f"{low:.2f}–{high:.2f}{half}"
    return f"{low:,.0f}–{high:,.0f}{half}"


def table(report: dict[str, Any]) -> str:
    labels = report["labels"]
    lines = ["| implementation | workload | rate | runs min–max | p50 ms | p99 ms | vs native | vs aioquic | client CPU s | "
             "server CPU s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    def ratio(x: float | None) -> str:
        return f"{x:.2f}x" if x is not None else ""

    def ms(x: float | None) -> str:
        return f"{x:.3f}" if x is not None else ""

    for r in report["rows"]:
        if r["workload"] in HS_WORKLOADS:
            continue
        error = r["error"].strip().splitlines()[-1][-70:].replace("|", "/") if r["error"] else ""
        rate = f"error: {error}" if error else (
            f"{r['value']:.2f} {r['unit']}" if r["unit"] == "Gbit/s" else f"{r['value']:,.0f} {r['unit']}")
        lines.append(f"| {labels[r['impl']]} | {r['workload']} | {rate} | {spread(r)} | {ms(r['p50_ms'])} | {ms(r['p99_ms'])} | "
                     f"{ratio(r['vs_native'])} | {ratio(r['vs_aioquic'])} | {r['client_cpu_s']:.2f} | "
                     f"{r['server_cpu_s']:.2f} |")
    lines += handshake_table(report, ratio, ms)
    if report["memory"]:
        lines += ["", "| implementation | idle connections | server RSS per 1,000 | client RSS per 1,000 |",
                  "|---|---:|---:|---:|"]
        for m in report["memory"]:
            lines.append(f"| {labels[m['impl']]} | {m['connections']} | {m['server_kb_per_1000'] / 1024:.1f} MiB | "
                         f"{m['client_kb_per_1000'] / 1024:.1f} MiB |")
    if report["skipped"]:
        lines += [""] + [f"- {labels.get(k, k)} not run: {v}" for k, v in report["skipped"].items()]
    not_run = report.get("not_run") or {}
    if not_run:
        lines += [""] + [f"- {labels.get(k, k)} does not run {v}" for k, v in not_run.items()]
    return "\n".join(lines)


def handshake_table(report: dict[str, Any], ratio: Any, ms: Any) -> list[str]:
    """The hs-* rows: connections per second and time to first byte, each mode beside
    the same implementation's full handshake."""
    rows = [r for r in report["rows"] if r["workload"] in HS_WORKLOADS]
    if not rows:
        return []
    full = {r["impl"]: r for r in rows if r["workload"] == "hs-full" and not r["error"]}
    rtt, parallel = report.get("hs_rtt_ms", 0), report.get("hs_parallel", 1)
    server = report.get("server")
    lines = ["", f"Handshake workloads: {parallel} connection loop(s), "
             + (f"{rtt:g} ms round trip added by bench/relay.py." if rtt else "plain loopback.")
             + (f" Every client talks to the {server} server." if server else ""),
             "", "| implementation | mode | connections/s | runs min–max | TTFB p50 ms | TTFB p99 ms | p50 vs full | "
             "vs native | vs aioquic | resumed | 0-RTT accepted | client CPU s | server CPU s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        label, mode = report["labels"][r["impl"]], r["workload"][3:]
        if r["error"]:
            error = r["error"].strip().splitlines()[-1][-90:].replace("|", "/")
            lines.append(f"| {label} | {mode} | error: {error} |  |  |  |  |  |  |  |  |  |  |")
            continue
        base = full.get(r["impl"])
        vs_full = r["p50_ms"] / base["p50_ms"] if base and base["p50_ms"] and r["workload"] != "hs-full" else None
        n = r["connections"] or 1
        lines.append(f"| {label} | {mode} | {r['value']:,.0f} | {spread(r)} | {ms(r['p50_ms'])} | {ms(r['p99_ms'])} | "
                     f"{ratio(vs_full)} | {ratio(r['vs_native'])} | {ratio(r['vs_aioquic'])} | "
                     f"{r['resumed'] / n:.0%} | {r['early_data'] / n:.0%} | {r['client_cpu_s']:.2f} | "
                     f"{r['server_cpu_s']:.2f} |")
    return lines


def chart(report: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed (pip install -e '.[bench]'): no chart")
        return False
    workloads = [w for w in UNITS if any(r["workload"] == w for r in report["rows"])]
    impls = list(dict.fromkeys(r["impl"] for r in report["rows"]))
    fig, axes = plt.subplots(1, len(workloads), figsize=(3.2 * len(workloads), 4.2), squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, workload in zip(axes[0], workloads):
        values = [next((r["value"] for r in report["rows"] if r["impl"] == i and r["workload"] == workload), 0)
                  for i in impls]
        ax.bar(range(len(impls)), values, color=[colors(k) for k in range(len(impls))])
        ax.set_title(workload)
        ax.set_ylabel(UNITS[workload])
        ax.set_xticks(range(len(impls)))
        ax.set_xticklabels([report["labels"][i] for i in impls], rotation=60, ha="right", fontsize=7)
    fig.suptitle(f"QUIC on loopback, {report['machine']['cores']} cores, higher is better")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
