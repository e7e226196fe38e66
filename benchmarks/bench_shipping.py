"""Shipping (issue 15): how fast a local ledger ships, and what shipping costs ``record()``.

Targets:

(i) Sustained shipping rate: ``Shipper.ship()`` (what ``decision-trace ship`` runs; 512
events a request, one connection) of a local SQLite ledger of pre-recorded events to a
real ``decision-trace serve`` subprocess on a fresh SQLite ledger, on loopback, reaches
at least 0.8x the spans per second that same server ingests from the OpenTelemetry
SDK's ``OTLPSpanExporter`` (4 exporters at once, 512 spans a request: exactly how
``bench_ingest.py`` measures ingest) for the same events, measured in the same run,
alternating which side goes first. Each side gets a fresh server and ledger each repeat
and 16 warm-up spans before the clock starts; the destination is counted afterwards
(every event stored once).

(ii) ``record()`` while in-process shipping runs: the per-call time of ``record()``
(the benchmark event, batch durability) in a client with ``ship_to`` set is at most
1.10x that of a client without it, in the same process, in pairs of bursts (which goes
first alternates; the median of the per-pair ratios, as ``bench_record.py`` does). Two
loops: a tight one (``record()`` back to back: the worst case) and a realistic one
(about 1 ms of pure-Python application work before each ``record()``; only the
``record()`` calls are timed, the loop's total per event is printed too). The
destination is a null OTLP receiver in its own process (it reads each request and
answers 200: the counterpart of ``bench_record.py``'s do-nothing exporter), so what is
measured is the shipper's cost in the application's process. Before each burst of the
shipping client, as many events as a burst are recorded untimed and the burst starts
once the shipper is shipping them (so it is busy all through the burst: the steady state
of an application recording faster than it ships); after each burst both pipelines are
flushed and the shipper's backlog drained (not timed), so the shipper is idle during the
other client's bursts. The share of a burst's events shipped before it ended is printed.
The shipper's ``cpu_share`` is measured at 0.1 (``DEFAULT_CPU_SHARE``, what ``ship_to=``
uses), 0.25 and 1.0; the target is about the default.

    python benchmarks/bench_shipping.py [--quick] [--events N] [--repeats N]
                                        [--rate-only | --record-only]
"""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    QUICK,
    EventData,
    chunks,
    finished_spans,
    fmt_rate,
    header,
    make_events,
    median,
    record_event,
    report_ratio,
    scratch_dir,
    size,
)
from _server import running_server
from bench_ingest import BATCH, WARMUP, ingest, stored

from decision_trace import DecisionTraceClient
from decision_trace._otlp_request import encode_request
from decision_trace.shipping import DEFAULT_CPU_SHARE, BackgroundShipper, Shipper
from decision_trace.storage import open_ledger

SHIP_TARGET = 0.8
RECORD_TARGET = 1.10
WORK_S = 0.001
"""Application work before each ``record()`` in the realistic loop."""


def option(name: str, default: int) -> int:
    if name in sys.argv[1:]:
        return int(sys.argv[sys.argv.index(name) + 1])
    return default


# --- (i) the shipping rate ---------------------------------------------------------------


@dataclass
class ShipRun:
    seconds: float
    shipper_cpu_s: float
    server_cpu_s: float
    requests: int


def ship_once(local: Path, target: str, warmup: Sequence[Any], count: int) -> ShipRun:
    """Ship ``local`` to a new server on ``target``: the time until the last batch was
    acknowledged."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    with running_server(target) as server:
        first = OTLPSpanExporter(endpoint=server.traces_url, timeout=60)
        assert first.export(warmup) is SpanExportResult.SUCCESS
        first.shutdown()
        ledger = open_ledger(local)
        try:
            with Shipper(ledger, server.traces_url, batch_size=BATCH, timeout=60) as shipper:
                gc.collect()
                server_cpu = server.cpu_seconds()
                cpu = time.process_time()
                start = time.perf_counter()
                report = shipper.ship(max_wait=300)
                seconds = time.perf_counter() - start
                cpu = time.process_time() - cpu
                server_cpu = server.cpu_seconds() - server_cpu
            ledger.forget_destination(shipper.destination)
        finally:
            ledger.close()
        if not report.ok or report.shipped != count:
            raise RuntimeError(f"shipping failed: {report}\n{''.join(server.lines)}")
    held = stored(target)
    if held != count + len(warmup):
        raise RuntimeError(f"the destination holds {held} events, {count} were shipped")
    return ShipRun(seconds, cpu, server_cpu, report.requests)


def shipper_cpu_per_event(local: Path, repeats: int = 3) -> tuple[float, float]:
    """CPU microseconds per event of the shipper's two steps, in this process (best of
    ``repeats``): reading the ledger in commit order, and encoding the OTLP request."""
    ledger = open_ledger(local, read_only=True)
    try:
        records = [record for _, record in ledger.iter_records(batch_size=BATCH)]
        reads, encodes = [], []
        for _ in range(repeats):
            cpu = time.process_time()
            for _ in ledger.iter_records(batch_size=BATCH):
                pass
            reads.append(time.process_time() - cpu)
            cpu = time.process_time()
            for part in chunks(records, BATCH):
                encode_request(part)
            encodes.append(time.process_time() - cpu)
    finally:
        ledger.close()
    return min(reads) / len(records) * 1e6, min(encodes) / len(records) * 1e6


def measure_rate(count: int, repeats: int, tmp: Path) -> None:
    local = tmp / "local.db"
    spans = finished_spans(make_events(count, seed=5), local)
    warmup = finished_spans(make_events(WARMUP, seed=99), tmp / "warmup.db")
    batches = chunks(spans, BATCH)
    print(
        f"   (i) {count:,} pre-recorded events, {BATCH} a request, {repeats} repeats; "
        "a fresh server and destination ledger each repeat"
    )
    read_us, encode_us = shipper_cpu_per_event(local)
    print(
        f"   shipper CPU per event, in-process, best of 3: read {read_us:.1f} us, "
        f"encode {encode_us:.1f} us"
    )
    ship_runs: list[ShipRun] = []
    ingest_server_cpu: list[float] = []
    serial = iter(range(10_000))

    def ours(run: int) -> float:
        result = ship_once(local, str(tmp / f"ship-{next(serial)}.db"), warmup, count)
        ship_runs.append(result)
        return result.seconds

    def limit(run: int) -> float:
        result = ingest(str(tmp / f"ingest-{next(serial)}.db"), warmup, batches, "exporter")
        ingest_server_cpu.append(result.server_cpu_s)
        return result.seconds

    ship_s: list[float] = []
    ingest_s: list[float] = []
    for run in range(repeats):
        order = [(ours, ship_s), (limit, ingest_s)]
        if run % 2:
            order.reverse()
        for fn, out in order:
            out.append(fn(run))
    ratios = sorted(i / s for s, i in zip(ship_s, ingest_s, strict=True))
    ship_rate, ingest_rate = count / median(ship_s), count / median(ingest_s)

    def per_k(values: Sequence[float]) -> str:
        return f"{median(values) / count * 1e6:.0f} ms"

    print(
        f"   serve ingest, OTLPSpanExporter x4 (the limit): median {fmt_rate(ingest_rate)}; "
        f"server CPU per 1,000 spans {per_k(ingest_server_cpu)}"
    )
    print(
        f"   ship (one Shipper, {BATCH}/request): median {fmt_rate(ship_rate)} "
        f"(per-repeat ratios {ratios[0]:.2f}-{ratios[-1]:.2f}x); per 1,000 events: wall "
        f"{per_k(ship_s)}, shipper CPU {per_k([r.shipper_cpu_s for r in ship_runs])}, "
        f"server CPU {per_k([r.server_cpu_s for r in ship_runs])}; "
        f"{median([r.requests for r in ship_runs]):.0f} requests"
    )
    report_ratio("ship/ingest sqlite", median(ratios), at_least=SHIP_TARGET)


# --- (ii) the cost to record() -------------------------------------------------------------

NULL_RECEIVER = textwrap.dedent(
    """
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
    """
)


def calibrate_work(seconds: float) -> int:
    """Iterations of :func:`work` that take about ``seconds`` of this thread's CPU (CPU
    time, the best of five: the machine's load does not change the amount of work)."""
    n = 20_000
    took = min(_cpu_of(n) for _ in range(5))
    return max(1, int(n * seconds / took))


def _cpu_of(n: int) -> float:
    start = time.thread_time()
    work(n)
    return time.thread_time() - start


def work(n: int) -> int:
    """Pure-Python application work (holds the GIL, as most application code does)."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def backlog(client: DecisionTraceClient) -> int:
    return sum(s.backlog for s in client.shipping_status())


def drain(client: DecisionTraceClient, ships: bool, timeout: float = 300.0) -> None:
    """Flush ``client``; if it ships, wait until its shipper has shipped everything."""
    client.flush()
    if not ships:
        return
    deadline = time.monotonic() + timeout
    while client.shipping_status() == [] or backlog(client):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the shipper did not drain: {client.shipping_status()}")
        time.sleep(0.02)


SHARES = (DEFAULT_CPU_SHARE, 0.25, 1.0)
"""The shipper's ``cpu_share`` values measured; the first is what ``ship_to=`` uses."""


@contextmanager
def shipping_client(path: Path, url: str, share: float) -> Iterator[DecisionTraceClient]:
    """A client whose ledger ships to ``url`` in-process, with ``cpu_share=share``:
    ``ship_to=`` for the default share, else the same ``BackgroundShipper`` on the
    client's own ledger with another share (the client does not take one)."""
    if share == DEFAULT_CPU_SHARE:
        with DecisionTraceClient(db_path=path, ship_to=url) as client:
            yield client
        return
    with DecisionTraceClient(db_path=path) as client:
        shipper = BackgroundShipper(client._storage, url, cpu_share=share)
        try:
            yield client
        finally:
            shipper.close(5.0)


def backlog_to_ship(client: DecisionTraceClient, events: list[EventData]) -> None:
    """Give the shipper a backlog (as many events as a burst, recorded untimed) and wait
    until it ships, so that it is busy all through the burst that follows: the steady
    state of an application recording faster than it ships. (Without it, a tight burst
    of half a second ends before the idle shipper's first look.)"""
    shipped = sum(s.shipped for s in client.shipping_status())
    for e in events:
        record_event(client, e)
    client.flush()
    deadline = time.monotonic() + 60
    while sum(s.shipped for s in client.shipping_status()) == shipped:
        if time.monotonic() > deadline:
            raise RuntimeError("the shipper did not start")
        time.sleep(0.005)


def measure_record(tmp: Path, repeats: int) -> None:
    receiver = subprocess.Popen(
        [sys.executable, "-c", NULL_RECEIVER], stdout=subprocess.PIPE, text=True
    )
    try:
        assert receiver.stdout is not None
        url = f"http://127.0.0.1:{receiver.stdout.readline().strip()}"
        n = calibrate_work(WORK_S)
        print(
            f"   application work: {n:,} iterations of a pure-Python loop, "
            f"{WORK_S * 1e3:.0f} ms of CPU"
        )
        loops: list[tuple[str, int, int]] = [
            ("tight", size(2_000, 300), 0),
            ("realistic", size(1_000, 100), n),
        ]
        with DecisionTraceClient(db_path=tmp / "plain.db") as plain:
            for share in SHARES:
                with shipping_client(tmp / f"ship-{share}.db", url, share) as shipping:
                    for label, burst, iterations in loops:
                        events = make_events(burst, seed=3)
                        run_loop(label, share, plain, shipping, events, iterations, repeats)
    finally:
        receiver.kill()
        receiver.wait()


def run_loop(
    label: str,
    share: float,
    plain: DecisionTraceClient,
    shipping: DecisionTraceClient,
    events: list[EventData],
    iterations: int,
    repeats: int,
) -> None:
    cpu_s: dict[str, list[float]] = {"plain": [], "shipping": []}

    def burst(client: DecisionTraceClient, name: str = "") -> tuple[float, float]:
        """Seconds per call of record(), and of the whole loop, per event (and the
        process's CPU seconds per event, every thread, into ``cpu_s``)."""
        in_record = 0.0
        cpu = time.process_time()
        start = time.perf_counter()
        for e in events:
            if iterations:
                work(iterations)
            t = time.perf_counter()
            record_event(client, e)
            in_record += time.perf_counter() - t
        total = time.perf_counter() - start
        if name:
            cpu_s[name].append((time.process_time() - cpu) / len(events))
        return in_record / len(events), total / len(events)

    burst(plain)  # warm-up
    burst(shipping)
    drain(plain, ships=False)
    drain(shipping, ships=True)
    record_s: dict[str, list[float]] = {"plain": [], "shipping": []}
    loop_s: dict[str, list[float]] = {"plain": [], "shipping": []}
    shipped_during: list[float] = []
    sides: list[tuple[str, DecisionTraceClient]] = [("plain", plain), ("shipping", shipping)]
    for run in range(repeats):
        for name, client in sides if run % 2 == 0 else sides[::-1]:
            if name == "shipping":
                backlog_to_ship(shipping, events)
            gc.collect()
            before = sum(s.shipped for s in shipping.shipping_status())
            per_call, per_event = burst(client, name)
            if name == "shipping":
                after = sum(s.shipped for s in shipping.shipping_status())
                shipped_during.append((after - before) / len(events))
            record_s[name].append(per_call)
            loop_s[name].append(per_event)
            drain(client, ships=name == "shipping")
    ratios = sorted(s / p for s, p in zip(record_s["shipping"], record_s["plain"], strict=True))
    work_text = f", {WORK_S * 1e3:.0f} ms of work before each" if iterations else ""
    default = " (the default, ship_to=)" if share == DEFAULT_CPU_SHARE else ""
    print(
        f"   (ii) cpu_share {share}{default}, {label} loop: {len(events):,} record() calls a "
        f"burst{work_text}, {repeats} bursts each"
    )
    for name in ("plain", "shipping"):
        print(
            f"     {'shipping' if name == 'shipping' else 'no ship_to'}: record() median "
            f"{median(record_s[name]) * 1e6:7.2f} us/call; loop "
            f"{median(loop_s[name]) * 1e6:8.1f} us/event; process CPU "
            f"{median(cpu_s[name]) * 1e6:7.1f} us/event"
        )
    loop_ratio = median(loop_s["shipping"]) / median(loop_s["plain"])
    print(
        f"     per-pair ratios min {ratios[0]:.2f}x, max {ratios[-1]:.2f}x; whole loop "
        f"{loop_ratio:.2f}x; shipped during a burst: median {median(shipped_during):.0%} "
        "of its events"
    )
    report_ratio(
        f"record ship/no-ship {label} cpu_share={share}", median(ratios), at_most=RECORD_TARGET
    )


def main() -> None:
    header(
        "shipping: Shipper.ship() vs serve's own ingest; record() with and without ship_to",
        f"ship >= {SHIP_TARGET}x serve ingest (OTLPSpanExporter x4); record() with "
        f"ship_to <= {RECORD_TARGET}x without (tight and realistic loops)",
    )
    count = option("--events", size(51_200, 2 * BATCH))
    repeats = option("--repeats", size(3, 1))
    record_repeats = size(9, 3)
    with scratch_dir() as tmp:
        if "--record-only" not in sys.argv[1:]:
            measure_rate(count, repeats, tmp)
        if "--rate-only" not in sys.argv[1:]:
            measure_record(tmp, record_repeats)
    if QUICK:
        print("   (quick mode: sizes too small for meaningful ratios)")


if __name__ == "__main__":
    main()
