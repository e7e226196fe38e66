"""Proving the ledger from the command line and the client (docs/proving.md): ``keygen``,
``checkpoint``, ``verify``, ``erase``, ``prune --keep-skeleton``, and the client's
``verify()``, ``erase()`` and ``checkpoint_key=``. Each runs on both backends
(``ledger_target``); tampering is done with the backend's own SQL."""

from __future__ import annotations

import json
import sqlite3
import stat
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from decision_trace import DecisionTraceClient
from decision_trace.checkpoint import load_public_key, read_checkpoint_file
from decision_trace.cli import main
from decision_trace.errors import InvalidInputError
from decision_trace.storage import is_url

NOW = datetime.now(timezone.utc)


def run(*args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    return result


def edit(target: str, sql: str, *params: object) -> None:
    """Change the stored rows behind the library's back (``?`` placeholders)."""
    if is_url(target):
        with psycopg.connect(target) as conn:
            conn.execute(sql.replace("?", "%s"), params)
        return
    conn = sqlite3.connect(target)
    try:
        with conn:
            conn.execute(sql, params)
    finally:
        conn.close()


@pytest.fixture
def shop(make_client: Callable[..., DecisionTraceClient], ledger_target: str) -> dict[str, Any]:
    """A ledger with a customer's events (some by the customer as a user actor), others'
    events, and one old event; the ids by role."""
    client = make_client(durability="sync")
    ids: dict[str, Any] = {"customer": [], "user": [], "other": []}
    for i in range(6):
        ids["customer"].append(
            client.trace("order.refunded", f"Refund for Ada Lovelace number {i}")
            .by_user("agent-7", "Sam Support")
            .affecting_customer("c-42", {"email": "ada@example.com", "name": "Ada Lovelace"})
            .affecting_order(f"ord-{i}", {"status": "refunded"})
            .because("Ada said the parcel never came", context={"phone": "+44 20 7946 0000"})
            .with_tags("refund", "vip-ada")
            .record()
        )
    ids["user"].append(
        client.trace("cart.updated", "Ada changed her cart")
        .by_user("u-ada", "Ada Lovelace", email="ada@example.com")
        .affecting("cart", "cart-1", {"items": 2})
        .record()
    )
    for i in range(4):
        ids["other"].append(
            client.trace("product.price_changed", f"Price {i}")
            .by_ai_agent("pricing-bot", "gpt-x")
            .affecting_product(f"p-{i}", {"price": 10 + i})
            .because("competitor moved")
            .record()
        )
    ids["old"] = (
        client.trace("order.created", "Old order of Bob")
        .at(NOW - timedelta(days=400))
        .by_user("u-bob", "Bob Old")
        .affecting_order("ord-old", {"total": 5})
        .record()
    )
    ids["target"] = ledger_target
    return ids


def verify_json(target: str, *args: str, code: int = 0) -> dict[str, Any]:
    result = run("verify", "--db", target, "--json", *args, code=code)
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_a_recorded_ledger_verifies(shop: dict[str, Any]) -> None:
    report = verify_json(shop["target"])
    assert report["ok"] is True and report["problem_count"] == 0
    assert report["entries"] == report["events"] == 12
    text = run("verify", "--db", shop["target"]).stdout
    assert text.startswith("OK: 12 chain entries: 12 events intact")


def test_verify_names_a_changed_event_and_exits_1(shop: dict[str, Any]) -> None:
    victim = shop["other"][1]
    edit(shop["target"], "UPDATE events SET reasoning = 'competitor moveD' WHERE id = ?", victim)
    report = verify_json(shop["target"], code=1)
    assert report["ok"] is False and report["problem_count"] == 1
    (problem,) = report["problems"]
    assert problem["kind"] == "changed" and problem["event_id"] == victim
    text = run("verify", "--db", shop["target"], code=1).stdout
    assert text.startswith("FAILED: 1 problem") and f"changed: event {victim}" in text


def test_checkpoint_signed_then_verified_and_truncation_caught(
    shop: dict[str, Any], tmp_path: Path
) -> None:
    key = tmp_path / "keys" / "ledger.key"
    key.parent.mkdir()
    made = json.loads(run("keygen", "--out", str(key), "--json").stdout)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert Path(made["public_key"]) == key.with_name("ledger.key.pub")
    out = run("checkpoint", "--db", shop["target"], "--key", str(key), "--out", f"{tmp_path}/cps/")
    (cp_file,) = (tmp_path / "cps").iterdir()
    assert str(cp_file) in out.stderr
    cp = read_checkpoint_file(cp_file, load_public_key(key.with_name("ledger.key.pub")))
    assert cp.entries == 12
    args = ("--checkpoint", str(cp_file), "--pubkey", str(key.with_name("ledger.key.pub")))
    report = verify_json(shop["target"], *args)
    assert report["ok"] and report["checkpoints"] == 1
    # The last two events go, with their chain entries: the chain alone still links.
    if is_url(shop["target"]):
        edit(shop["target"], "DELETE FROM chain WHERE position > ?", cp.position - 2)
        edit(shop["target"], "DELETE FROM events WHERE seq NOT IN (SELECT event_seq FROM chain)")
    else:
        edit(shop["target"], "DELETE FROM chain WHERE position > ?", cp.position - 2)
        edit(shop["target"], "DELETE FROM events WHERE rowid > ?", cp.position - 2)
    assert verify_json(shop["target"])["ok"] is True
    report = verify_json(shop["target"], *args, code=1)
    assert [p["kind"] for p in report["problems"]] == ["checkpoint"]
    assert "no longer reaches" in report["problems"][0]["detail"]


def test_a_checkpoint_on_stdout_and_of_another_ledger(
    shop: dict[str, Any], tmp_path: Path, make_client: Callable[..., DecisionTraceClient]
) -> None:
    key = tmp_path / "k"
    run("keygen", "--out", str(key))
    text = run("checkpoint", "--db", shop["target"], "--key", str(key)).stdout
    assert text.startswith("decision-trace checkpoint 1\n") and "\nsignature: " in text
    other = tmp_path / "other.db"
    make_client(db_path=other, durability="sync").trace("x.y").by_system("s").record()
    cp_file = tmp_path / "cp.txt"
    cp_file.write_text(text)
    result = run(
        "verify",
        "--db",
        str(other),
        "--checkpoint",
        str(cp_file),
        "--pubkey",
        f"{key}.pub",
        code=1,
    )
    assert "is a checkpoint of ledger" in result.stderr
    edited = text.replace("entries: 12", "entries: 13")
    cp_file.write_text(edited)
    result = run(
        "verify", "--db", shop["target"], "--checkpoint", str(cp_file), "--pubkey",
        f"{key}.pub", code=1,
    )  # fmt: skip
    assert "signature does not verify" in result.stderr
    result = run("verify", "--db", shop["target"], "--checkpoint", str(cp_file), code=2)
    assert "--pubkey" in result.stderr


def test_erase_a_customer_keeps_the_skeleton_and_verifies(
    shop: dict[str, Any], make_client: Callable[..., DecisionTraceClient]
) -> None:
    target = shop["target"]
    dry = json.loads(
        run(
            "erase", "--db", target, "--subject", "customer:c-42", "--reason", "GDPR 1",
            "--dry-run", "--json",
        ).stdout
    )  # fmt: skip
    assert dry["events"] == 6 and sorted(dry["event_ids"]) == sorted(shop["customer"])
    assert dry["position"] is None
    assert verify_json(target)["erased"] == 0  # a dry run changes nothing
    done = json.loads(
        run(
            "erase", "--db", target, "--subject", "customer:c-42", "--reason", "GDPR 1",
            "--requested-by", "dpo@shop.example", "--json",
        ).stdout
    )  # fmt: skip
    assert done["events"] == 6 and done["position"] == 13
    assert done["pseudonym"].startswith("erased-")
    report = verify_json(target)
    assert report["ok"] and report["erased"] == 6 and report["events"] == 6
    (act,) = report["acts"]
    assert act["act"] == "erasure" and act["reason"] == "GDPR 1"
    assert act["requested_by"] == "dpo@shop.example" and act["events"] == 6
    assert act["subject"] == done["pseudonym"]
    client = make_client(db_path=target)
    event = client.get_event(shop["customer"][0])
    assert event is not None
    assert event.event_type == "order.refunded" and event.description == ""
    assert event.decision is None and event.tags == ()
    assert [o.object_type.value for o in event.objects] == ["customer", "order"]
    assert all(o.external_id.startswith("erased-") for o in event.objects)
    assert event.objects[0].external_id == done["pseudonym"]
    assert [e.id for e in client.search("Ada")] == shop["user"]  # the erased are not found
    assert client.get_object_history("c-42") == []
    untouched = client.get_event(shop["other"][0])
    assert untouched is not None and untouched.decision is not None
    again = json.loads(
        run(
            "erase", "--db", target, "--subject", "customer:c-42", "--reason", "again",
            "--json",
        ).stdout
    )  # fmt: skip
    assert again["events"] == 0 and again["pseudonym"] == done["pseudonym"]


def test_erase_a_user_actor(shop: dict[str, Any]) -> None:
    result = run(
        "erase", "--db", shop["target"], "--subject", "user:u-ada", "--reason", "closed",
    )  # fmt: skip
    assert "Erased 1 event involving user:u-ada" in result.stdout
    assert verify_json(shop["target"])["erased"] == 1


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--subject", "customer", "--reason", "x"), "is not TYPE:ID"),
        (("--subject", "shoe:1", "--reason", "x"), "is not one of"),
        (("--subject", "customer:c-42", "--reason", " "), "needs a reason"),
    ],
)
def test_erase_refuses_bad_input(
    shop: dict[str, Any], args: tuple[str, ...], fragment: str
) -> None:
    result = run("erase", "--db", shop["target"], *args, code=1)
    assert fragment in result.stderr
    assert verify_json(shop["target"])["erased"] == 0


def test_prune_keep_skeleton_then_plain_prune(shop: dict[str, Any]) -> None:
    target = shop["target"]
    result = run("prune", "--db", target, "--older-than", "1y", "--keep-skeleton", "--json")
    assert json.loads(result.stdout)["events"] == 1
    report = verify_json(target)
    assert report["ok"] and report["payload_pruned"] == 1
    assert [a["act"] for a in report["acts"]] == ["prune-payload"]
    run("prune", "--db", target, "--older-than", "1y")
    report = verify_json(target)
    assert report["ok"] and report["pruned"] == 1 and report["payload_pruned"] == 0
    assert [a["act"] for a in report["acts"]] == ["prune-payload", "prune"]
    assert report["entries"] == 14  # 12 events and two acts: the pruned one stays chained


def test_client_verify_erase_and_background_checkpoints(
    make_client: Callable[..., DecisionTraceClient], ledger_target: str, tmp_path: Path
) -> None:
    run("keygen", "--out", str(tmp_path / "k"))
    folder = tmp_path / "cps"
    client = make_client(checkpoint_key=tmp_path / "k", checkpoint_dir=folder, checkpoint_every=5)
    for i in range(12):
        client.trace("order.created").by_user(f"u-{i % 3}", "Someone").record()
    report = client.erase("user:u-1", reason="asked", requested_by="dpo")
    assert report.events == 4
    assert client.verify().ok
    client.close()
    files = sorted(folder.iterdir())
    assert files, "no checkpoint was written"
    public = load_public_key(tmp_path / "k.pub")
    last = max((read_checkpoint_file(f, public) for f in files), key=lambda cp: cp.position)
    assert last.entries >= 12
    run("verify", "--db", ledger_target, "--checkpoint", str(files[-1]), "--pubkey",
        str(tmp_path / "k.pub"))  # fmt: skip


def test_client_checkpoint_options_are_checked(
    make_client: Callable[..., DecisionTraceClient], tmp_path: Path
) -> None:
    run("keygen", "--out", str(tmp_path / "k"))
    with pytest.raises(InvalidInputError, match="checkpoint_every"):
        make_client(checkpoint_key=tmp_path / "k", checkpoint_every=0)
    with pytest.raises(InvalidInputError, match="checkpoint_interval_s"):
        make_client(checkpoint_key=tmp_path / "k", checkpoint_interval_s=-1)
