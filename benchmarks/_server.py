"""A real ``decision-trace serve`` subprocess for the benchmarks (``bench_ingest.py``,
``bench_web.py``). Not a benchmark itself."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT_S = 60.0
_LISTENING = re.compile(r"listening on https?://[^:]+:(\d+)")
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    """A ``decision-trace serve`` subprocess on a free port."""

    proc: subprocess.Popen[str]
    port: int = 0
    lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def traces_url(self) -> str:
        return f"{self.url}/v1/traces"

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the server used so far (``/proc/<pid>/stat``)."""
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS

    def peak_rss_bytes(self) -> int:
        """The server's peak resident set size so far (``VmHWM``)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM in /proc/<pid>/status")


@contextlib.contextmanager
def running_server(db: str, *args: str) -> Iterator[Server]:
    """``decision-trace serve --db DB`` on a free port (``args``: more options); stopped
    (SIGTERM) afterwards."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DECISION_TRACE_")}
    env["PYTHONUNBUFFERED"] = "1"
    command = [sys.executable, "-m", "decision_trace", "serve", "--db", db]
    command += ["--port", "0", "--no-grpc", *args]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    server = Server(proc)
    ready = threading.Event()

    def collect() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            server.lines.append(line)
            if "listening on" in line:
                ready.set()
        ready.set()

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    try:
        ready.wait(START_TIMEOUT_S)
        match = _LISTENING.search("".join(server.lines))
        if proc.poll() is not None or match is None:
            raise RuntimeError("the server did not start:\n" + "".join(server.lines))
        server.port = int(match.group(1))
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(10)
