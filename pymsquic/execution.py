"""Where msquic's work runs: its own worker threads (default) or the event loop's thread.

``"threads"`` (default): msquic runs its own worker threads; callbacks reach
Python's event loop through an eventfd.

``"loop"`` (opt-in, msquic's preview "custom execution"): msquic creates no
thread; the asyncio event loop drives it (its epoll fd is a reader on the
loop, and the loop's timer follows msquic's), so every msquic callback runs
on the loop's own thread. The mode is process-wide and fixed when msquic is
first opened: choose it with :func:`set_execution_mode` before any other use
of pymsquic, or with the environment variable ``PYMSQUIC_EXECUTION=loop``.

In ``"loop"``: one event loop at a time drives msquic (another loop is refused
until the first is closed, running or not; a closed loop hands over to the next); :mod:`pymsquic.sync`'s
first blocking wait (or listener start) starts a native thread that drives msquic too (also while
an event loop is blocked); a closed :class:`~pymsquic.Registration` keeps its
msquic handle until exit (msquic 2.5.1 reads freed memory if polled after
RegistrationClose). See the README, "Execution mode".
"""

from __future__ import annotations

import os

from . import _native
from ._msquic import ffi, lib

MODES = ("threads", "loop")
ENV_VAR = "PYMSQUIC_EXECUTION"


def _check_mode(mode: object, source: str) -> str:
    if not isinstance(mode, str):
        raise TypeError(f"{source} must be a str, not {type(mode).__name__}")
    if mode not in MODES:
        raise ValueError(f"{source} must be one of {', '.join(map(repr, MODES))}, not {mode!r}")
    return mode


def set_execution_mode(mode: str) -> None:
    """Choose where msquic's work runs: ``"threads"`` (default) or ``"loop"``.

    Process-wide; only before msquic is opened (the first Registration,
    listener or connection). Afterwards choosing the mode in use is accepted
    and another one raises RuntimeError. Overrides ``PYMSQUIC_EXECUTION``.
    """
    _native.choose_execution_mode(_check_mode(mode, "mode"))


def execution_mode() -> str:
    """The mode in use once msquic is open, else the one it will open in."""
    return _native.execution_mode_or(lambda: mode_from_environment())


def mode_from_environment() -> str:
    """``PYMSQUIC_EXECUTION``'s mode (``"threads"`` when unset or empty); ValueError if unknown."""
    value = os.environ.get(ENV_VAR, "")
    if not value:
        return "threads"
    return _check_mode(value, f"the environment variable {ENV_VAR}")


def step_stats() -> dict[str, int]:
    """Loop mode's counters since msquic opened, for diagnostics (all 0 in ``"threads"``).

    ``steps``: drive steps; ``polls``: msquic ExecutionPoll rounds in them (and
    in the driver thread's and the exit's); ``completions``: fd completions
    dispatched; steps that stopped while msquic asked for more, because they
    ran their most rounds (``capped_steps``), their time budget
    (``budget_steps``), or msquic had handed the loop something to answer
    (``yielded_steps``); ``step_us`` and ``max_step_us``: time inside the
    steps, in all and the longest.
    """
    out = ffi.new("pmq_execution_stats *")
    lib.pmq_execution_get_stats(out)
    return {name: int(getattr(out, name)) for name in ("steps", "polls", "completions", "capped_steps",
                                                        "budget_steps", "yielded_steps", "step_us",
                                                        "max_step_us")}
