"""Connecting to Ray and letting go of it: the cluster in ``RAY_ADDRESS`` if set, else a local one
started for the command; and the signals that end a command while it holds one.

Contract:

- :func:`connect` joins or starts Ray once per process. :func:`shutdown` stops a local Ray that
  ``connect`` started together with every process it started (``gcs_server``, ``raylet``, the
  dashboard and its agents, workers); from a joined cluster it only disconnects.
- Inside :func:`interruptible`, SIGTERM is handled as Ctrl-C is: the block unwinds (its ``finally``
  clauses run; no stage marks half-written output complete), leaves as :class:`Interrupted` naming
  the signal, and the Ray it started is stopped on the way out. A second Ctrl-C does not cut that
  stop short.
- :func:`fit` runs a Ray Train trainer under the same rules; :func:`wait_for_stop_signal` blocks
  until SIGINT or SIGTERM, the normal end of a service.

Ray 2.60 takes signals over in three places, each undone here (docs/operations.md):

- ``ray.init`` sets a Python SIGTERM handler (``sys.exit(15)``, taken for the interrupt it is),
  and the driver's C++ core worker installs its failure-signal handler for SIGTERM beneath it: a
  SIGTERM then aborts the process (exit -6) without unwinding, leaving Ray's processes behind.
  ``connect`` puts the command's handler back, which also reinstalls Python's C-level handler;
  only a SIGTERM in the moment between the two still aborts.
- Ray Train's ``fit()`` installs a SIGINT handler that asks its controller to abort and then lets
  ``fit()`` return as if training had ended (or calls ``sys.exit(0)``); :func:`fit` skips it.
- ``ray.shutdown()`` can return while processes Ray started still run (the dashboard's module
  processes on a busy machine; ``gcs_server`` and the dashboard after a ``ray.init`` that failed);
  :func:`shutdown` gives them a moment, then ends them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pipelines import console

__all__ = [
    "Interrupted",
    "connect",
    "fit",
    "interruptible",
    "shutdown",
    "wait_for_stop_signal",
]

log = logging.getLogger(__name__)

_WORKER_NICENESS = "RAY_worker_niceness"
# Seconds shutdown() gives Ray's leftover processes after ray.shutdown(), then after SIGTERM.
_GRACE_S = 2.0


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM ended a command run under :func:`interruptible`."""

    def __init__(self, signum: int) -> None:
        self.signal = signal.Signals(signum)
        super().__init__(self.signal.name)


@dataclass
class _Hold:
    """This process's hold on Ray and its signals (one per process, as Ray itself is)."""

    # The SIGTERM handler of the interruptible() block running, None outside one.
    sigterm_handler: Any = None
    # Whether connect() called ray.init (so shutdown() has something to undo).
    connected: bool = False
    # The local Ray connect() started: pids of this process's children from before (not Ray's),
    # and Ray's own processes right after ray.init (a process whose parent died, say agents of a
    # raylet that a Ctrl-C to the process group ended, is no longer a descendant of this one).
    # None and empty when connect() started none.
    other_children: set[int] | None = None
    ray_processes: list[Any] = field(default_factory=list)


_HOLD = _Hold()


def connect(num_cpus: int | None = None) -> bool:
    """Initialise Ray once; returns True when this call started a local cluster (caller shuts it
    down with :func:`shutdown`).

    A local cluster gets at least 4 logical CPUs: training workers and Serve replicas take
    fractions of a CPU, and Ray Data still needs a budget to run beside them on a small laptop.
    Its workers run at nice 0, as Ray's job submission starts them: by default Ray starts workers at
    nice 15, where any other busy process starves the job's own work (docs/operations.md).
    ``RAY_worker_niceness`` set by the user wins.
    """
    import ray

    if ray.is_initialized():
        return False
    _HOLD.connected = True
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], logging_level=logging.WARNING)
        _rearm_sigterm()
        console.install_worker_filter()
        return False
    os.environ.setdefault(_WORKER_NICENESS, "0")  # read by ray.init, passed on to the raylet
    _HOLD.other_children = {child.pid for child in _children()}
    ray.init(
        num_cpus=num_cpus or max(4, os.cpu_count() or 1),
        # The dashboard also serves the state API that Ray Train's placement-group cleaner polls;
        # without it that cleaner warns every few seconds.
        include_dashboard=True,
        logging_level=logging.WARNING,
    )
    _HOLD.ray_processes = [c for c in _children() if c.pid not in _HOLD.other_children]
    _rearm_sigterm()
    console.install_worker_filter()
    return True


def shutdown() -> None:
    """Undo :func:`connect`: disconnect; a local Ray it started stops, and every process that Ray
    started still running a moment later is ended (SIGTERM, then SIGKILL). A Ray that connect()
    found running is left alone. Idempotent."""
    if not _HOLD.connected:
        return
    import psutil  # shipped with Ray (ray/thirdparty_files, on sys.path once ray is imported)
    import ray

    _HOLD.connected = False
    others, _HOLD.other_children = _HOLD.other_children, None
    known, _HOLD.ray_processes = _HOLD.ray_processes, []
    # A second Ctrl-C while Ray stops would leave half of it running.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if _main_thread() else None
    try:
        processes = [] if others is None else [c for c in _children() if c.pid not in others]
        processes += [p for p in known if p not in processes]
        if ray.is_initialized():
            ray.shutdown()
        _, alive = psutil.wait_procs(processes, timeout=_GRACE_S)
        if alive:
            log.debug("ending what Ray left running: %s", ", ".join(map(str, alive)))
        for end in (psutil.Process.terminate, psutil.Process.kill):
            for process in alive:
                with contextlib.suppress(psutil.Error):
                    end(process)
            _, alive = psutil.wait_procs(alive, timeout=_GRACE_S)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Run a command: SIGTERM unwinds the block as Ctrl-C does, either leaves as
    :class:`Interrupted`, and the Ray the block started is stopped on every way out."""
    received: list[int] = []

    def on_sigterm(signum: int, frame: object) -> None:
        # Ray's blocking calls turn any exception from a signal handler into a plain
        # KeyboardInterrupt, so the record, not the exception, says which signal it was.
        received.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    _HOLD.sigterm_handler = on_sigterm
    try:
        yield
    except KeyboardInterrupt as err:
        raise Interrupted(received[0] if received else signal.SIGINT) from err
    except SystemExit as err:
        # Ray's own handler (sys.exit(15)), there while ray.init runs, before connect() puts
        # ours back.
        if err.code != signal.SIGTERM:
            raise
        raise Interrupted(signal.SIGTERM) from err
    finally:
        try:
            shutdown()
        finally:
            _HOLD.sigterm_handler = None
            signal.signal(signal.SIGTERM, previous)


def fit(trainer: Any) -> Any:
    """``trainer.fit()`` (a Ray Train trainer) with Ctrl-C raising KeyboardInterrupt, as everywhere
    else: the run stops, its last checkpoint stays, and the next run resumes from it."""
    # Ray Train's own handler would abort the controller and let fit() return as if training had
    # ended; an instance attribute keeps the trainer class as it is.
    trainer._register_sigint_handler = lambda controller: None
    return trainer.fit()


def wait_for_stop_signal() -> None:
    """Block the main thread until SIGINT or SIGTERM (how a service is stopped)."""
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _rearm_sigterm() -> None:
    # After ray.init: the command's handler again instead of Ray's sys.exit(15), and Python's
    # C-level handler instead of the core worker's aborting one (signal.signal installs both).
    if _HOLD.sigterm_handler is not None and _main_thread():
        signal.signal(signal.SIGTERM, _HOLD.sigterm_handler)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _children() -> list[Any]:
    import psutil

    return psutil.Process().children(recursive=True)
