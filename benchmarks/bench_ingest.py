"""Ingest over OTLP/HTTP: ``decision-trace serve`` vs the same ledger's own ``write()``.

Target: decision spans acknowledged by a real ``decision-trace serve`` subprocess reach
at least 0.5x of the spans per second the same backend's ``Ledger.write()`` takes for
the same records in the same batch sizes, measured in the same run, for SQLite and for
PostgreSQL. Also reported: the server's peak RSS (``VmHWM``).

The ingest side: the OpenTelemetry SDK's ``OTLPSpanExporter`` (OTLP/HTTP, binary
protobuf, no compression) sends the finished spans of ``DecisionTraceClient.record()``
calls, 512 spans a request (the SDK's ``BatchSpanProcessor`` default), from
``EXPORTERS`` threads at once (several services exporting together), to a server started
for the repeat on a fresh ledger (``--no-grpc``, no token). The clock runs from the
first request until every request was answered ``200``; the server answers once the
spans are committed. The ledger is then counted: every span must be stored once.

The limit: ``open_ledger(target, durability="sync")`` (as the server opens it) on a
fresh ledger, ``write()`` of the same records, 512 a call, one caller: what the backend
takes when nothing else is in the way (no HTTP, no protobuf, no decoding of spans).

The client runs in this process and the server in its own, on the same machine: the
client's encoding costs CPU the server could use. Both processes' CPU seconds are
printed, and so is the client's encoding alone. For information (no target), each repeat
also times the same server fed the bodies that encoder made before the clock started
(POSTed on keep-alive connections from as many threads): the server's share alone.

PostgreSQL: ``$DECISION_TRACE_BENCH_PG`` (default the local server
``postgresql://postgres@127.0.0.1:5432/test``); each repeat of each side works in a new
schema ``dt_bench_ingest_<hex>`` (``?options=-csearch_path%3D...``), dropped afterwards.
Without a server the PostgreSQL half prints ``skipped`` and the SQLite half still runs.

    python benchmarks/bench_ingest.py [--quick] [--sqlite-only | --postgres-only]
                                      [--repeats N] [--profile DIR]

``--profile DIR`` samples the server of every ingest repeat with py-spy (``pip install
py-spy``; it needs ptrace rights) into ``DIR/<backend>-<sender>-<repeat>.txt`` (collapsed
stacks) and prints where the first repeat's time went. The sampling costs CPU: the
ratios of a profiled run are not the benchmark's.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import http.client
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from _common import (
    alternate,
    chunks,
    finished_spans,
    fmt_rate,
    header,
    make_events,
    median,
    report_ratio,
    scratch_dir,
    size,
)
from _server import running_server

from decision_trace._decode import record_from_span
from decision_trace.storage import EventFilters, open_ledger

BATCH = 512
EXPORTERS = 4
"""Exporters sending at once (each its own ``OTLPSpanExporter`` on its own thread)."""
WARMUP = 16
"""Spans written before the clock starts, on both sides (first-request costs)."""
TARGET = 0.5
PG_SERVER = os.environ.get("DECISION_TRACE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


# --- PostgreSQL schemas -------------------------------------------------------------------


def pg_available() -> str | None:
    """The server's version, or None (with the reason printed) when there is none."""
    try:
        import psycopg
    except ImportError:
        print("   postgresql: skipped: psycopg is not installed (pip install '.[postgres]')")
        return None
    try:
        # Under the restart lock: a test restarting the shared server finishes first.
        with restart_lock_shared(), psycopg.connect(PG_SERVER, connect_timeout=5) as conn:
            row = conn.execute("SHOW server_version").fetchone()
    except psycopg.Error as exc:
        print(f"   postgresql: skipped: no server at {PG_SERVER}: {exc}".rstrip())
        return None
    return str(row[0]) if row else "?"


@contextlib.contextmanager
def restart_lock_shared(timeout: float = 300.0) -> Iterator[None]:
    """Hold the test suite's restart lock of the PostgreSQL server shared (the protocol
    of ``tests/pg_support.py``: ``<tmp>/decision-trace-pglock-<host>_<port>`` and its
    ``.gate``), so a test restarting the shared server waits for this unit of work."""
    parts = urlsplit(PG_SERVER)
    name = re.sub(r"[^A-Za-z0-9.]+", "_", f"{parts.hostname or 'socket'}-{parts.port or 5432}")
    folder = os.environ.get("DECISION_TRACE_PG_LOCK_DIR") or tempfile.gettempdir()
    path = Path(folder) / f"decision-trace-pglock-{name}"
    try:
        main = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
        gate = os.open(f"{path}.gate", os.O_RDONLY | os.O_CREAT, 0o666)
    except OSError:
        yield
        return

    def take(fd: int, operation: int) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, operation | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError("waited too long for a server restart") from None
                time.sleep(0.05)

    try:
        take(gate, fcntl.LOCK_EX)
        try:
            take(main, fcntl.LOCK_SH)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(main, fcntl.LOCK_UN)
    finally:
        os.close(main)
        os.close(gate)


@contextlib.contextmanager
def pg_schema() -> Iterator[str]:
    """A new empty schema, dropped afterwards; the ledger URL that selects it."""
    import psycopg

    schema = f"dt_bench_ingest_{uuid.uuid4().hex[:10]}"
    with restart_lock_shared():
        with psycopg.connect(PG_SERVER, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        try:
            joiner = "&" if "?" in PG_SERVER else "?"
            yield f"{PG_SERVER}{joiner}options=-csearch_path%3D{schema}"
        finally:
            with psycopg.connect(PG_SERVER, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


# --- the two sides ---------------------------------------------------------------------


@dataclass
class IngestRun:
    seconds: float
    server_cpu_s: float
    client_cpu_s: float
    peak_rss_bytes: int


def stored(target: str) -> int:
    ledger = open_ledger(target, create=False)
    try:
        return ledger.count(EventFilters())
    finally:
        ledger.close()


class Sender:
    """How the spans reach the server: ``exporter`` is the OpenTelemetry SDK's
    ``OTLPSpanExporter`` (it encodes each batch, then POSTs it); ``raw`` POSTs bodies the
    same encoder made before the clock started, on keep-alive connections (the server's
    share alone, for information)."""

    def __init__(self, kind: str, url: str, batches: Sequence[Sequence[Any]]) -> None:
        self.kind = kind
        self.url = url
        self.batches = batches
        if kind == "raw":
            from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

            self.bodies = [bytes(encode_spans(b).SerializePartialToString()) for b in batches]

    def sender(self) -> Callable[[int], bool]:
        """A function for one thread: send batch ``i``; whether it was acknowledged."""
        if self.kind == "exporter":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import SpanExportResult

            exporter = OTLPSpanExporter(endpoint=self.url, timeout=60)
            return lambda i: exporter.export(self.batches[i]) is SpanExportResult.SUCCESS
        parts = urlsplit(self.url)
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)

        def post(i: int) -> bool:
            for _ in range(100):  # 503 with Retry-After: wait and retry, as exporters do
                conn.request(
                    "POST",
                    parts.path,
                    body=self.bodies[i],
                    headers={"Content-Type": "application/x-protobuf"},
                )
                response = conn.getresponse()
                response.read()
                if response.status != 503:
                    return response.status == 200
                time.sleep(float(response.getheader("retry-after") or 1))
            return False

        return post


def ingest(
    target: str,
    warmup: Sequence[Any],
    batches: Sequence[Sequence[Any]],
    kind: str,
    profile: Path | None = None,
) -> IngestRun:
    """Send ``batches`` from ``EXPORTERS`` threads to a new server on ``target``; the
    time until all were acknowledged. With ``profile``, py-spy samples the server
    meanwhile and writes its collapsed stacks there."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    expected = len(warmup) + sum(len(b) for b in batches)
    with running_server(target) as server:
        first = OTLPSpanExporter(endpoint=server.traces_url, timeout=60)
        assert first.export(warmup) is SpanExportResult.SUCCESS
        first.shutdown()
        source = Sender(kind, server.traces_url, batches)
        failures: list[int] = []
        start_gate = threading.Barrier(EXPORTERS + 1)

        def send(indexes: Sequence[int]) -> None:
            post = source.sender()
            start_gate.wait()
            for i in indexes:
                if not post(i):
                    failures.append(i)

        threads = [
            threading.Thread(target=send, args=(range(k, len(batches), EXPORTERS),))
            for k in range(EXPORTERS)
        ]
        for thread in threads:
            thread.start()
        spy = start_py_spy(server.proc.pid, profile) if profile else None
        gc.collect()
        server_cpu = server.cpu_seconds()
        client_cpu = time.process_time()
        start_gate.wait()
        start = time.perf_counter()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - start
        client_cpu = time.process_time() - client_cpu
        server_cpu = server.cpu_seconds() - server_cpu
        peak = server.peak_rss_bytes()
        if spy is not None:
            stop_py_spy(spy)
        if failures:
            raise RuntimeError(f"{len(failures)} exports failed:\n{''.join(server.lines)}".rstrip())
    count = stored(target)
    if count != expected:
        raise RuntimeError(f"the ledger holds {count} events, {expected} were sent")
    return IngestRun(seconds, server_cpu, client_cpu, peak)


# --- profiling (--profile DIR) ------------------------------------------------------------


def start_py_spy(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling ``pid`` into ``output``: the thread holding the GIL (the server
    is one Python process, so its GIL bounds what it does)."""
    command = [
        str(Path(sys.executable).with_name("py-spy")),
        "record",
        "--pid",
        str(pid),
        "--format",
        "raw",
        "--rate",
        "200",
        "--gil",
        "--output",
        str(output),
    ]
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # attached
    return spy


def stop_py_spy(spy: subprocess.Popen[bytes]) -> None:
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(60)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()


STAGES = (
    ("ledger write (IngestService._write, the writer thread)", ("IngestService._write",)),
    ("decode, protobuf to SDK spans (_otlp._readable_span)", ("_readable_span",)),
    ("decode, SDK span to record (_decode.record_from_span)", ("record_from_span",)),
    ("parse protobuf bytes (_otlp.parse_protobuf)", ("parse_protobuf",)),
)


def summarize_profile(path: Path, top: int = 12) -> None:
    """Print where the server's GIL time went: per stage and per function."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        total += count
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + count
        for name in {f.split(" (")[0] for f in frames}:
            inclusive[name] = inclusive.get(name, 0) + count
    if not total:
        print(f"   profile {path.name}: no samples")
        return
    print(f"   profile {path.name}: {total} samples holding the GIL")
    staged = 0
    for label, functions in STAGES:
        share = max(inclusive.get(f, 0) for f in functions)
        staged += share
        print(f"     {100 * share / total:5.1f}%  {label}")
    rest = "the rest: event loop, HTTP, routing, answers, threads handing over work"
    print(f"     {100 * (total - staged) / total:5.1f}%  {rest}")
    print("     hottest functions (own time):")
    for frame, count in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        print(f"     {100 * count / total:5.1f}%  {frame[:110]}")


def write_limit(
    target: str, warmup: Sequence[Any], batches: Sequence[Sequence[Any]]
) -> tuple[float, float]:
    """Seconds ``Ledger.write()`` takes for ``batches`` on a fresh ledger at ``target``,
    and the CPU seconds of this process meanwhile."""
    expected = len(warmup) + sum(len(b) for b in batches)
    ledger = open_ledger(target, durability="sync")
    try:
        ledger.write(warmup)
        gc.collect()
        cpu = time.process_time()
        start = time.perf_counter()
        for batch in batches:
            ledger.write(batch)
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu
    finally:
        ledger.close()
    count = stored(target)
    if count != expected:
        raise RuntimeError(f"the ledger holds {count} events, {expected} were written")
    return seconds, cpu


def cpu_per_span(spans: Sequence[Any], repeats: int = 5) -> None:
    """Print the CPU microseconds per span of each step, in this process (the best of
    ``repeats``): the exporter's encoding, and the server's parsing and decoding."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from decision_trace.server._otlp import _attributes, decode_request, parse_protobuf

    batches = chunks(spans, BATCH)
    bodies = [bytes(encode_spans(b).SerializePartialToString()) for b in batches]
    requests = [parse_protobuf(body) for body in bodies]
    pb_spans = [
        span
        for request in requests
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]

    def encode(batch: Sequence[Any]) -> bytes:
        return bytes(encode_spans(batch).SerializePartialToString())

    def best(step: Callable[[], object]) -> float:
        times = []
        for _ in range(repeats):
            start = time.process_time()
            step()
            times.append(time.process_time() - start)
        return min(times) / len(spans) * 1e6

    steps = (
        ("client: OTLPSpanExporter's encoding", lambda: [encode(b) for b in batches]),
        ("server: parse the protobuf body", lambda: [parse_protobuf(b) for b in bodies]),
        ("server: decode spans to records", lambda: [decode_request(r) for r in requests]),
        ("  of which attribute values", lambda: [_attributes(s.attributes) for s in pb_spans]),
        ("  of which record_from_span", lambda: [record_from_span(s) for s in spans]),
    )
    size_text = f"{sum(map(len, bodies)) / len(spans):,.0f} B/span on the wire"
    print(f"   CPU per span, in-process, best of {repeats} ({size_text}):")
    for label, step in steps:
        print(f"     {best(step):6.1f} us  {label}")


def measure(
    backend: str,
    fresh: Callable[[str], contextlib.AbstractContextManager[str]],
    span_batches: Sequence[Sequence[Any]],
    warmup_spans: Sequence[Any],
    count: int,
    repeats: int,
    profile: Path | None,
) -> None:
    record_batches = [[record_from_span(s) for s in b] for b in span_batches]
    warmup_records = [record_from_span(s) for s in warmup_spans]
    runs: dict[str, list[IngestRun]] = {"exporter": [], "raw": []}
    limit_cpu: list[float] = []

    def ours(kind: str, run: int) -> float:
        spy = profile / f"{backend}-{kind}-{run}.txt" if profile else None
        with fresh(f"ingest-{run}") as target:
            result = ingest(target, warmup_spans, span_batches, kind, spy)
        runs[kind].append(result)
        return result.seconds

    def limit(run: int) -> float:
        with fresh(f"write-{run}") as target:
            seconds, cpu = write_limit(target, warmup_records, record_batches)
        limit_cpu.append(cpu)
        return seconds

    def both(run: int) -> float:
        # The real exporter is what the target is about; pre-encoded bodies show the
        # server's share alone. Alternate their order too.
        first, second = ("raw", "exporter") if run % 2 else ("exporter", "raw")
        seconds = {first: ours(first, run)}
        seconds[second] = ours(second, run)
        raw_s.append(seconds["raw"])
        return seconds["exporter"]

    raw_s: list[float] = []
    ours_s, limit_s = alternate(both, limit, repeats)
    limit_rate = count / median(limit_s)
    ours_rate, raw_rate = count / median(ours_s), count / median(raw_s)
    ratios = [w / o for o, w in zip(ours_s, limit_s, strict=True)]
    raw_ratios = [w / o for o, w in zip(raw_s, limit_s, strict=True)]
    every = runs["exporter"] + runs["raw"]
    peak = max(r.peak_rss_bytes for r in every)

    def per_k(values: Sequence[float]) -> str:
        return f"{median(values) / count * 1e6:.0f} ms"

    print(f"   {backend}: Ledger.write(), {BATCH}/call, one caller: median {fmt_rate(limit_rate)}")
    print(
        f"   {backend}: serve, OTLPSpanExporter x{EXPORTERS}: median {fmt_rate(ours_rate)} "
        f"(per-repeat ratios {min(ratios):.2f}-{max(ratios):.2f}x)"
    )
    print(
        f"   {backend}: serve, pre-encoded bodies x{EXPORTERS} (server alone, for "
        f"information): median {fmt_rate(raw_rate)}, {raw_rate / limit_rate:.2f}x "
        f"(per-repeat {min(raw_ratios):.2f}-{max(raw_ratios):.2f}x)"
    )
    print(
        f"   {backend}: CPU per 1,000 spans: write() {per_k(limit_cpu)}; server "
        f"{per_k([r.server_cpu_s for r in runs['exporter']])} (pre-encoded: "
        f"{per_k([r.server_cpu_s for r in runs['raw']])}); exporters "
        f"{per_k([r.client_cpu_s for r in runs['exporter']])}"
    )
    print(f"   {backend}: server peak RSS {peak / 1e6:.1f} MB (VmHWM, the largest of every server)")
    report_ratio(f"ingest/write {backend}", ours_rate / limit_rate, at_least=TARGET)
    if profile:
        for kind in ("exporter", "raw"):
            summarize_profile(profile / f"{backend}-{kind}-0.txt")


def main() -> None:
    header(
        "ingest over OTLP/HTTP: decision-trace serve vs the same ledger's write() "
        f"({BATCH} spans a request / a call)",
        f"serve >= {TARGET}x Ledger.write(), SQLite and PostgreSQL; the server's peak RSS",
    )
    only_sqlite = "--sqlite-only" in sys.argv[1:]
    only_pg = "--postgres-only" in sys.argv[1:]
    profile = None
    if "--profile" in sys.argv[1:]:
        profile = Path(sys.argv[sys.argv.index("--profile") + 1]).resolve()
        profile.mkdir(parents=True, exist_ok=True)
    count = size(40 * BATCH, 2 * BATCH)
    repeats = size(5, 2)
    if "--repeats" in sys.argv[1:]:
        repeats = int(sys.argv[sys.argv.index("--repeats") + 1])
    with scratch_dir() as tmp:
        spans = finished_spans(make_events(count, seed=5), tmp / "source.db")
        warmup = finished_spans(make_events(WARMUP, seed=99), tmp / "warmup.db")
        batches = chunks(spans, BATCH)
        print(
            f"   {count:,} spans, {BATCH} a request, {EXPORTERS} exporters at once, "
            f"{repeats} repeats; a fresh server and ledger each repeat"
        )
        cpu_per_span(spans[: size(4 * BATCH, BATCH)])

        if not only_pg:

            @contextlib.contextmanager
            def sqlite_file(name: str) -> Iterator[str]:
                path = tmp / f"{name}-{uuid.uuid4().hex[:6]}.db"
                yield str(path)
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)

            measure("sqlite", sqlite_file, batches, warmup, count, repeats, profile)

        if not only_sqlite:
            version = pg_available()
            if version is not None:
                print(f"   postgresql: PostgreSQL {version} at {PG_SERVER}")

                @contextlib.contextmanager
                def schema(name: str) -> Iterator[str]:
                    with pg_schema() as url:
                        yield url

                measure("postgresql", schema, batches, warmup, count, repeats, profile)


if __name__ == "__main__":
    main()
