"""The framework recipes (docs/recipes.md) run for real: server, request, then the CLI.

Each example app in examples/recipes/ is started as a real server on a free port of
127.0.0.1, sent a refund over HTTP, and asked why with the ``decision-trace`` command on
its ledger while the app runs; after a SIGTERM (a deploy) the ledger still holds exactly
that decision. Flask, FastAPI and uvicorn are optional test dependencies (the ``test``
extra); without them the test skips. Each test takes a few seconds, most of it
interpreter start-up and imports (the server, then two CLI runs).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
RECIPES = REPO_ROOT / "examples" / "recipes"
DOC = REPO_ROOT / "docs" / "recipes.md"
DEADLINE_S = 60.0
"""Generous on a loaded 2-core machine: every wait polls a condition until this."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def env_for(db: Path) -> dict[str, str]:
    # conftest already isolated HOME and removed OTEL_* and DECISION_TRACE_* settings.
    return {
        **os.environ,
        "DECISION_TRACE_DB": str(db),
        "PYTHONUNBUFFERED": "1",
        "PYTHONIOENCODING": "utf-8",
        "NO_COLOR": "1",
    }


@contextmanager
def serving(command: list[str], db: Path, log: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start a server on a free port; yield it and its base URL once it accepts connections.

    A port taken between the probe and the server's bind makes the server exit: then try
    another. The server is always stopped (SIGKILL if still running) and reaped.
    """
    for _ in range(3):
        port = free_port()
        with log.open("w") as out:
            proc = subprocess.Popen(
                [arg.replace("{port}", str(port)) for arg in command],
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                env=env_for(db),
            )
        try:
            if wait_for_port(proc, port):
                yield proc, f"http://127.0.0.1:{port}"
                return
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=DEADLINE_S)
    pytest.fail(f"the server never listened:\n{log.read_text()}")


def wait_for_port(proc: subprocess.Popen[str], port: int) -> bool:
    """True once the port accepts a connection; False if the server exited first."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"port {port} not listening after {DEADLINE_S} s")


def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=DEADLINE_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def decision_trace(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The ``decision-trace`` command installed beside this interpreter (as users run it)."""
    script = Path(sys.executable).with_name("decision-trace")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "decision_trace"]
    return subprocess.run(
        [*command, "--db", str(db), *args],
        capture_output=True,
        text=True,
        env=env_for(db),
        timeout=DEADLINE_S,
        check=False,
    )


def why_until_answered(db: Path, target: str, reasoning: str) -> str:
    """``decision-trace why`` until it names the reasoning (the writer commits within 0.2 s)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        result = decision_trace(db, "why", target)
        if reasoning in result.stdout or time.monotonic() > deadline:
            return result.stdout + result.stderr
        time.sleep(0.1)


def documented_why() -> str:
    """The ``decision-trace why`` output docs/recipes.md shows."""
    text = DOC.read_text()
    (shown,) = re.findall(r"```text\n\$ decision-trace why order:ord-1003\n(.*?)```", text, re.S)
    return str(shown)


def unstamped(text: str) -> str:
    """``why`` output without what changes on every run: the time and the event id."""
    text = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", "<time>", text)
    return re.sub(r"(?m)^(  event +)[0-9a-f]{16}$", r"\1<id>", text)


def check_recipe(command: list[str], tmp_path: Path) -> None:
    db = tmp_path / "shop.db"
    log = tmp_path / "server.log"
    with serving(command, db, log) as (server, base):
        status, answer = post(
            f"{base}/orders/ord-1003/refund",
            {"amount": "30.00", "reason": "Lid arrived cracked", "agent_id": "agent-sam"},
        )
        assert status == 200, (answer, log.read_text())
        assert answer["order_id"] == "ord-1003" and len(answer["decision"]) == 16

        status, error = post(
            f"{base}/orders/ord-2/refund",
            {"amount": "-5", "reason": "x", "agent_id": "agent-sam"},
        )
        assert (status, error["field"]) == (400, "refund_amount"), error

        # A support agent asks while the app runs.
        text = why_until_answered(db, "order:ord-1003", "Lid arrived cracked")
        assert "why        Lid arrived cracked" in text, text
        assert "who        user agent-sam (role support)" in text, text
        assert "changed    status: paid → refunded" in text, text
        assert answer["decision"] in text
        assert unstamped(text) == unstamped(documented_why()), (
            "docs/recipes.md shows another `why` output; paste this:\n" + text
        )

        # A deploy stops the app: it exits cleanly and the answer is unchanged.
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=DEADLINE_S) in (0, -signal.SIGTERM), log.read_text()
    # Exactly the one decision, kept through the stop; the rejected refund recorded nothing.
    after = decision_trace(db, "events", "--json", "--limit", "0")
    assert after.returncode == 0, after.stderr
    (event,) = [json.loads(line) for line in after.stdout.splitlines()]
    assert event["id"] == answer["decision"]
    assert event["decision"]["reasoning"] == "Lid arrived cracked"
    assert event["service_name"] == "shop-api"


def test_flask_recipe(tmp_path: Path) -> None:
    pytest.importorskip("flask")
    app = str(RECIPES / "flask_app.py")
    run = ["run", "--host", "127.0.0.1", "--port", "{port}", "--no-reload", "--no-debugger"]
    check_recipe([sys.executable, "-m", "flask", "--app", app, *run], tmp_path)


def test_fastapi_recipe(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    serve = ["fastapi_app:app", "--host", "127.0.0.1", "--port", "{port}", "--log-level", "warning"]
    check_recipe([sys.executable, "-m", "uvicorn", "--app-dir", str(RECIPES), *serve], tmp_path)
