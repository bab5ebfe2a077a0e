"""What a ``hashray`` command shows on the terminal: hashray's own lines by default, Ray's too with
``--verbose``.

Ray writes to the terminal through four channels, each quieted here when not verbose:

- Python loggers in the driver (``ray`` and ``ray.data`` INFO lines, the token-authentication
  warning, MLflow's store set-up): their console output is raised to WARNING or ERROR; Ray Data's
  file handler still writes everything to the session log folder.
- Lines that workers print, which Ray forwards to the driver (``(SplitCoordinator pid=..)``,
  deprecation warnings, ``(raylet)`` notices): only lines that hashray marks with
  :func:`worker_line` pass, printed without Ray's prefix. Ray keeps every worker's output in the
  session log folder.
- Ray's native (C++) log lines in the driver process, written straight to file descriptor 2
  (``core_worker.cc ... has constructor arguments in the object store``): descriptor 2 goes to the
  command's log file, while Python's ``sys.stderr`` keeps the terminal (see
  :func:`native_stderr_to`).
- Tracebacks: the CLI prints one line and writes the traceback to the log file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["configure", "install_worker_filter", "native_stderr_to", "ray_log_dir", "worker_line"]

# Worker lines that start with this pass the driver's filter (and are shown without it).
_MARKER = "[hashray] "
_STATE = {"verbose": True}
# Loggers whose console output a user does not need: (logger name, level shown).
_QUIET_LOGGERS = (
    ("ray", logging.WARNING),
    ("ray._private.authentication", logging.ERROR),  # "Token authentication is enabled ..."
    ("ray.train", logging.WARNING),
    ("ray.serve", logging.WARNING),
    ("mlflow", logging.WARNING),
    ("matplotlib", logging.WARNING),
    ("faiss.loader", logging.WARNING),  # each CPU-specific build it fails to load, at INFO
    ("filelock", logging.WARNING),
)


def configure(verbose: bool) -> None:
    """Set the console policy for this process; call before Ray or Ray Data is used."""
    _STATE["verbose"] = verbose
    if verbose:
        return
    for name, level in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(level)
    # MLflow sets its own logger's level when imported (later, inside a stage) from this variable;
    # the process's Ray workers inherit it too.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    _quiet_ray_data_console()


def verbose() -> bool:
    """Whether Ray's own output is shown (``hashray --verbose``)."""
    return _STATE["verbose"]


def worker_line(text: str) -> None:
    """Print one line from inside a Ray worker so that the driver shows it even when not verbose."""
    # sys.stdout.write, not print(): Ray Train patches print() to log and echo, doubling lines.
    sys.stdout.write(f"{_MARKER}{text}\n")
    sys.stdout.flush()


def install_worker_filter() -> None:
    """After ``ray.init``: forward only marked worker lines to the terminal unless verbose."""
    if _STATE["verbose"]:
        return
    # Ray 2.60's driver prints forwarded worker output through this dispatcher; replacing its one
    # handler is the only hook short of log_to_driver=False, which would drop hashray's lines too.
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", _print_marked_lines)
    _quiet_ray_data_console()  # Ray Data may have set up its handlers since configure()


def ray_log_dir() -> str | None:
    """The running Ray session's log folder on this node, if a Ray is connected."""
    with contextlib.suppress(Exception):
        import ray

        if ray.is_initialized():
            return ray._private.worker.global_worker.node.get_logs_dir_path()
    return None


@contextlib.contextmanager
def native_stderr_to(log_file: Path) -> Iterator[None]:
    """While the block runs, file descriptor 2 appends to ``log_file``; ``sys.stderr`` stays on the
    terminal. Does nothing when verbose or when ``sys.stderr`` is not descriptor 2 (captured)."""
    if _STATE["verbose"] or not _is_fd(sys.stderr, 2):
        yield
        return
    sys.stderr.flush()
    terminal = os.dup(2)
    python_stderr = sys.stderr
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        os.dup2(log.fileno(), 2)
    # Python's stderr keeps the terminal through a duplicate of the original descriptor.
    sys.stderr = open(terminal, "w", buffering=1, errors="replace", closefd=False)  # noqa: SIM115
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(terminal, 2)
        os.close(terminal)
        sys.stderr = python_stderr
        if log_file.stat().st_size == 0:
            log_file.unlink()  # nothing was logged: leave no empty file behind


def _print_marked_lines(data: dict[str, Any]) -> None:
    for line in data.get("lines", ()):
        if line.startswith(_MARKER):
            print(line[len(_MARKER) :], file=sys.stdout, flush=True)


def _quiet_ray_data_console() -> None:
    # Ray Data configures its own "ray.data" logger (file + console handlers, no propagation) when
    # imported; only the console handler is raised so the session's ray-data.log stays complete.
    if "ray.data" not in sys.modules:
        return
    from ray.data._internal.logging import SessionFileHandler

    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, SessionFileHandler):
            handler.setLevel(logging.ERROR)


def _is_fd(stream: Any, fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False
