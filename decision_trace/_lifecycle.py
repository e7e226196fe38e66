"""Process hooks: every client that is not closed is flushed, within its deadline, when the
process exits normally, receives SIGTERM or SIGHUP, or is a ``multiprocessing`` child.

- Clients are held by strong reference from creation until ``close()``: a client the
  application no longer references still has its queue written at exit.
- ``atexit`` and the fork hook are registered when ``decision_trace.client`` is imported.
- SIGTERM and SIGHUP handlers are installed from the main thread only (Python allows no
  other): at import when that is the main thread, else at the first client creation,
  ``flush()`` or ``close()`` made on the main thread. A signal is taken over only while it
  is at its default action, so a handler the host installed is never replaced (and a host
  that installs one later replaces ours). The handler flushes every client, then restores
  the default action and re-sends the signal, so the process still dies of it.
  ``DECISION_TRACE_SIGNAL_HOOKS=0`` (or ``false``/``off``/``no``) turns the signal handlers
  off; ``atexit`` stays.
- Shutting down: every client's ledger first, then the exporters, each within the
  client's own deadline (``shutdown_timeout_s``), counted from the start of the exit.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing.util
import os
import signal
import threading
import time
from types import FrameType
from typing import Protocol

__all__ = [
    "SIGNAL_HOOKS_ENV",
    "close_all",
    "install_process_hooks",
    "install_signal_hooks",
    "live_clients",
    "register",
    "unregister",
]

_logger = logging.getLogger(__name__)

SIGNAL_HOOKS_ENV = "DECISION_TRACE_SIGNAL_HOOKS"
"""Set to ``0``, ``false``, ``off`` or ``no`` to keep decision-trace off SIGTERM/SIGHUP."""

_SIGNAL_NAMES = ("SIGTERM", "SIGHUP")


class Closable(Protocol):
    """What the hooks need of a client."""

    shutdown_timeout_s: float

    def _close_ledger(self, deadline: float) -> None: ...

    def _close_exporters(self, deadline: float) -> None: ...

    def _release(self, deadline: float) -> None: ...

    def _after_fork_in_child(self) -> None: ...


_clients: dict[int, Closable] = {}
_lock = threading.RLock()
_process_hooks_installed = False
_signals_settled = False
_closing = False
_pending_signal: int | None = None


def register(client: Closable) -> None:
    """Hold ``client`` (strongly) until :func:`unregister`; retry the signal hooks."""
    with _lock:
        _clients[id(client)] = client
    install_signal_hooks()


def unregister(client: Closable) -> None:
    with _lock:
        _clients.pop(id(client), None)


def live_clients() -> list[Closable]:
    """The clients not closed yet, oldest first."""
    return list(_clients.values())  # a copy under the GIL: safe in a signal handler


def close_all() -> None:
    """Close every live client: all ledgers first, then exporters and files, each client
    within ``shutdown_timeout_s`` from now. Never raises."""
    global _closing
    clients = live_clients()
    if not clients:
        return
    was_closing, _closing = _closing, True
    start = time.monotonic()
    try:
        for phase in ("_close_ledger", "_close_exporters", "_release"):
            for client in clients:
                try:
                    getattr(client, phase)(start + client.shutdown_timeout_s)
                except Exception:
                    _logger.exception("decision-trace: closing a client at exit failed")
        for client in clients:
            unregister(client)
    finally:
        _closing = was_closing


def _at_exit() -> None:
    close_all()
    signum = _pending_signal
    if signum is not None:
        _die_of(signum)


def _die_of(signum: int) -> None:
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _pending_signal
    if _closing:
        # Already flushing (at exit, or a first signal): finish that, then die of this.
        _pending_signal = signum
        return
    _pending_signal = signum
    close_all()
    _die_of(signum)


def _signal_hooks_enabled() -> bool:
    value = os.environ.get(SIGNAL_HOOKS_ENV, "").strip().lower()
    return value not in ("0", "false", "off", "no")


def install_signal_hooks() -> None:
    """Take over SIGTERM and SIGHUP where they are at their default action. Only the main
    thread can; from another thread this does nothing (a later main-thread call retries)."""
    global _signals_settled
    if _signals_settled or threading.current_thread() is not threading.main_thread():
        return
    with _lock:
        if _signals_settled:
            return
        _signals_settled = True
        if not _signal_hooks_enabled():
            return
        for name in _SIGNAL_NAMES:
            signum = getattr(signal, name, None)
            if signum is None:
                continue
            try:
                if signal.getsignal(signum) is signal.SIG_DFL:
                    signal.signal(signum, _on_signal)
            except (ValueError, OSError):  # not the main interpreter, or not allowed
                pass


def _after_fork_in_child() -> None:
    global _lock, _closing, _pending_signal
    # A lock another thread held at fork() would stay held forever in the child.
    _lock = threading.RLock()
    _closing = False
    _pending_signal = None
    for client in live_clients():
        client._after_fork_in_child()


def _close_all_at_multiprocessing_exit(_: object) -> None:
    # multiprocessing ends its fork children with os._exit(), skipping atexit; it runs
    # its own finalizers first, so close there too.
    multiprocessing.util.Finalize(None, close_all, exitpriority=10)


class _Anchor:
    """A weak-referenceable object for ``multiprocessing.util.register_after_fork``."""


_ANCHOR = _Anchor()


def install_process_hooks() -> None:
    """Register atexit, the fork hooks and (from the main thread) the signal hooks; once."""
    global _process_hooks_installed
    with _lock:
        if not _process_hooks_installed:
            _process_hooks_installed = True
            atexit.register(_at_exit)
            if hasattr(os, "register_at_fork"):
                os.register_at_fork(after_in_child=_after_fork_in_child)
            multiprocessing.util.register_after_fork(_ANCHOR, _close_all_at_multiprocessing_exit)
    install_signal_hooks()
