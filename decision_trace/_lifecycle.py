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
- The application's own OpenTelemetry SDK provider (the global one, e.g. the one
  ``opentelemetry-instrument`` sets up, whose ``BatchSpanProcessor`` holds the request spans
  on their way to ``OTEL_TRACES_EXPORTER=decision_trace``) is force-flushed at the same
  time, each of its span processors on its own thread, within the longest client deadline
  (with no client: ``$DECISION_TRACE_SHUTDOWN_TIMEOUT``, else 10 s). Python's default
  SIGTERM ends the process without ``atexit``, so without this the SDK's own exit flush
  never runs and the decisions would point to request spans that were never stored. A
  processor still flushing at the deadline is left behind (logged), never waited for.
- :class:`~decision_trace.exporters.SQLiteSpanExporter` installs these hooks too, so an
  application that only sets ``OTEL_TRACES_EXPORTER=decision_trace`` and makes no client
  still has its spans flushed at SIGTERM and SIGHUP.
"""

from __future__ import annotations

import atexit
import logging
import math
import multiprocessing.util
import os
import signal
import threading
import time
from types import FrameType
from typing import Protocol

from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

from ._otel import span_processors
from .errors import InvalidInputError

__all__ = [
    "DEFAULT_SHUTDOWN_TIMEOUT_S",
    "SHUTDOWN_TIMEOUT_ENV",
    "SIGNAL_HOOKS_ENV",
    "close_all",
    "install_process_hooks",
    "install_signal_hooks",
    "live_clients",
    "register",
    "shutdown_timeout",
    "unregister",
]

_logger = logging.getLogger(__name__)

SIGNAL_HOOKS_ENV = "DECISION_TRACE_SIGNAL_HOOKS"
"""Set to ``0``, ``false``, ``off`` or ``no`` to keep decision-trace off SIGTERM/SIGHUP."""

_SIGNAL_NAMES = ("SIGTERM", "SIGHUP")

DEFAULT_SHUTDOWN_TIMEOUT_S = 10.0
"""How long ``close()``, the exit hook and the SIGTERM/SIGHUP hook may take per client."""

SHUTDOWN_TIMEOUT_ENV = "DECISION_TRACE_SHUTDOWN_TIMEOUT"
"""Seconds; the default of ``shutdown_timeout_s`` when the client is not given one."""


def shutdown_timeout(value: float | None) -> float:
    """``value`` checked, or ``$DECISION_TRACE_SHUTDOWN_TIMEOUT``, else 10 s.

    Raises:
        InvalidInputError: not a finite number of seconds >= 0 (naming the field or the
            variable it came from).
    """
    field = "shutdown_timeout_s"
    if value is None:
        raw = os.environ.get(SHUTDOWN_TIMEOUT_ENV, "").strip()
        if not raw:
            return DEFAULT_SHUTDOWN_TIMEOUT_S
        field = SHUTDOWN_TIMEOUT_ENV
        try:
            value = float(raw)
        except ValueError:
            raise InvalidInputError(field, f"must be a number of seconds, got {raw!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(field, f"must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise InvalidInputError(field, f"must be a finite number >= 0, got {value!r}")
    return float(value)


class Closable(Protocol):
    """What the hooks need of a client."""

    shutdown_timeout_s: float

    @property
    def tracer_provider(self) -> TracerProvider: ...

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
    within ``shutdown_timeout_s`` from now; meanwhile flush the application's SDK provider
    (see the module). Never raises."""
    global _closing
    try:
        clients = live_clients()
        app_provider = _application_provider(clients)
    except Exception:  # never let the exit or a signal handler fail
        _logger.exception("decision-trace: cannot look up what to flush at exit")
        return
    if not clients and app_provider is None:
        return
    was_closing, _closing = _closing, True
    start = time.monotonic()
    try:
        app_flush = None
        if app_provider is not None:
            app_flush = _ProviderFlush(app_provider, start + _app_timeout_s(clients))
        for phase in ("_close_ledger", "_close_exporters", "_release"):
            for client in clients:
                try:
                    getattr(client, phase)(start + client.shutdown_timeout_s)
                except Exception:
                    _logger.exception("decision-trace: closing a client at exit failed")
        for client in clients:
            unregister(client)
        if app_flush is not None:
            app_flush.wait()
    except Exception:
        _logger.exception("decision-trace: flushing at exit failed")
    finally:
        _closing = was_closing


def _application_provider(clients: list[Closable]) -> TracerProvider | None:
    """The global provider when it is an SDK one that is not a client's own."""
    provider = otel_trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        return None  # the API's proxy or no-op provider: nothing is queued there
    if any(getattr(client, "tracer_provider", None) is provider for client in clients):
        return None  # closed with its client
    return provider


def _app_timeout_s(clients: list[Closable]) -> float:
    """The longest client deadline, or with no client the configured default."""
    if clients:
        return max(client.shutdown_timeout_s for client in clients)
    try:
        return shutdown_timeout(None)
    except InvalidInputError as error:
        _logger.warning(
            "decision-trace: %s; flushing within %s s", error, DEFAULT_SHUTDOWN_TIMEOUT_S
        )
        return DEFAULT_SHUTDOWN_TIMEOUT_S


class _ProviderFlush:
    """Force-flush every span processor of ``provider`` at once, each on a daemon thread,
    so a processor stuck on its collector holds up none of the others; :meth:`wait` returns
    by ``deadline`` whatever they do."""

    def __init__(self, provider: TracerProvider, deadline: float) -> None:
        self._deadline = deadline
        processors = span_processors(provider)
        targets: tuple[TracerProvider | SpanProcessor, ...] = (
            (provider,) if processors is None else processors
        )
        self._threads: list[threading.Thread] = []
        for target in targets:
            thread = threading.Thread(
                target=self._flush,
                args=(target,),
                name="decision-trace-app-flush",
                daemon=True,
            )
            try:
                thread.start()
            except RuntimeError:  # no new threads at interpreter shutdown: flush here
                self._flush(target)
            else:
                self._threads.append(thread)

    def _flush(self, target: TracerProvider | SpanProcessor) -> None:
        millis = max(0, int((self._deadline - time.monotonic()) * 1000))
        try:
            target.force_flush(millis)
        except Exception:
            _logger.exception(
                "decision-trace: flushing the application's span processor %s failed",
                type(target).__name__,
            )

    def wait(self) -> None:
        for thread in self._threads:
            thread.join(max(0.0, self._deadline - time.monotonic()))
        late = sum(thread.is_alive() for thread in self._threads)
        if late:
            _logger.warning(
                "decision-trace: %d span processor(s) of the application's tracer provider "
                "did not finish flushing before the shutdown deadline; spans they still "
                "held may be lost",
                late,
            )


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
