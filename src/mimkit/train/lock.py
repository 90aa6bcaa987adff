"""One writer per run folder (a lock file naming its holder), and a clean stop on SIGINT/SIGTERM.

`out_dir/.lock` is held with `fcntl.flock` for as long as the run writes there, so the kernel
drops it when the process dies, however it dies. A second writer is refused in one line that
names the holder; a lock file left by a dead process (its flock gone) is reported and taken
over. On file systems without working `flock` (some network mounts) the PID check is the
fallback: a holder on this host whose PID is gone is stale; one on another host is trusted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from mimkit.errors import ConfigError

try:  # POSIX only; elsewhere the lock file alone (with its PID check) is the lock
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)
LOCK_FILE = ".lock"


def _holder(text: str) -> dict:
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _alive_here(holder: dict) -> bool:
    """Whether the holder is a live process on this host (other hosts: assumed alive)."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except (ProcessLookupError, ValueError, OverflowError):
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _describe(holder: dict) -> str:
    return f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}"


def _busy(out: Path, holder: dict, path: Path) -> ConfigError:
    return ConfigError(
        f"out_dir {out}: another run is writing there ({_describe(holder)}, lock {path}); "
        "wait for it or use another out_dir"
    )


@contextlib.contextmanager
def run_lock(out_dir: str | Path, enabled: bool = True) -> Iterator[None]:
    """Hold `out_dir/.lock` for the block; refuse (ConfigError) when another live run holds it."""
    if not enabled:
        yield
        return
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir {out}: is a file, expected a folder for the run")
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        previous = _holder(os.read(fd, 4096).decode("utf-8", "replace"))
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _busy(out, previous, path) from None
        if previous:
            if fcntl is None and _alive_here(previous):
                raise _busy(out, previous, path)
            log.warning(
                "out_dir %s: stale lock of %s (that process is gone); taking it over",
                out,
                _describe(previous),
            )
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": round(time.time())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # released cleanly: an empty lock file is no one's
    finally:
        os.close(fd)  # closing drops the flock


class _StopRequest:
    """The first SIGINT/SIGTERM of a run: noted, acted on at the next optimiser step."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def note(self, signum: int, frame: object) -> None:
        if self.signum is not None:  # a second signal: stop at once, without saving
            raise KeyboardInterrupt
        self.signum = signum
        log.warning(
            "%s received: saving a checkpoint at the next step, then stopping "
            "(send it again to stop at once)",
            signal.Signals(signum).name,
        )


_STOP = _StopRequest()


def stop_requested() -> str | None:
    """The name of the signal that asked the run to stop (SIGINT, SIGTERM), or None."""
    return signal.Signals(_STOP.signum).name if _STOP.signum is not None else None


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """For the block, SIGINT and SIGTERM ask the training loop to save and stop cleanly.

    Outside the main thread (where handlers cannot be set) the block runs with the handlers
    as they are.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _STOP.note) for sig in (signal.SIGINT, signal.SIGTERM)}
    _STOP.signum = None
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _STOP.signum = None
