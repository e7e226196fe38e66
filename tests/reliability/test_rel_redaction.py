"""Personal data: with redact=..., the plaintext is nowhere in the ledger (the SQLite
file and its write-ahead log; every row of the PostgreSQL schema), or in what a real
OTLP/HTTP receiver gets. The tests that record run on both backends (``ledger_target``)."""

from __future__ import annotations

import dataclasses
import gzip
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from reliability_support import is_postgres, ledger_bytes

from decision_trace import DecisionTraceClient, InvalidInputError, Redaction

EMAIL = "Zq.Annabelle.Prior@Example.org"
NAME = "Annabelle Prior"
PHONE = "+44 7700 900123"
SECRET_TOKENS = [b"annabelle", b"Annabelle", b"7700 900123", b"900123"]
KEY = b"test-hash-key-not-secret"


@dataclasses.dataclass
class Contact:
    email: str
    tier: str


class Receiver:
    """A real OTLP/HTTP receiver on 127.0.0.1 keeping every raw request body."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                received.append(body)
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def attributes(self) -> list[dict[str, str]]:
        spans = []
        for body in self.bodies:
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(body)
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    for span in scope.spans:
                        spans.append(
                            {kv.key: str(kv.value).strip() for kv in span.attributes}
                            | {"@name": span.name}
                        )
        return spans

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


def _record_personal_data(client: DecisionTraceClient) -> list[str]:
    ids = [
        client.trace("order.created", "Order placed on the web shop")
        .by_user("cust-1", NAME, email=EMAIL, backup_email=EMAIL, role="customer")
        .affecting_order("ord-1", {"total": 10}, state_after={"billing.email": EMAIL})
        .affecting_customer("cust-1", {"email": EMAIL, "phone": PHONE, "tier": "gold"})
        .because(
            "first order of a returning customer",
            context={
                "customer_email": EMAIL,
                "people": [{"Email": EMAIL, "phone": PHONE}],
                "contact": Contact(email=EMAIL, tier="gold"),
            },
            alternatives=[{"action": "call", "contact-email": EMAIL}],
        )
        .with_metadata(notify_email=EMAIL, channel="web")
        .record()
    ]
    with client.span("refund.requested", "Refund requested") as span:
        span.by_user("cust-1", NAME, email=EMAIL).with_metadata(reply_to_email=EMAIL)
    assert span.event_id is not None
    ids.append(span.event_id)
    return ids


_ledger_bytes = ledger_bytes
"""The SQLite file with its -wal and -shm, or every row of the PostgreSQL schema."""


def _wal_exists(target: str) -> bool:
    """SQLite: the write-ahead log is there, so the checks read it too (PostgreSQL's own
    log is the server's: what the ledger holds is its rows)."""
    return is_postgres(target) or Path(f"{target}-wal").exists()


def _leaks(data: bytes) -> list[bytes]:
    return [token for token in SECRET_TOKENS if token in data]


def test_without_redaction_the_plaintext_is_there(
    make_client: Callable[..., DecisionTraceClient], ledger_target: str, receiver: Receiver
) -> None:
    """The control: the checks below would see the plaintext if it were stored."""
    client = make_client(otlp_endpoint=receiver.endpoint)
    _record_personal_data(client)
    assert client.flush()
    assert _wal_exists(ledger_target)
    assert _leaks(_ledger_bytes(ledger_target))
    assert _leaks(b"".join(receiver.bodies))


@pytest.mark.parametrize("durability", ["batch", "sync"])
def test_hashed_personal_data_reaches_neither_the_file_nor_otlp(
    make_client: Callable[..., DecisionTraceClient],
    ledger_target: str,
    receiver: Receiver,
    durability: str,
) -> None:
    redact = Redaction(fields=("email", "name", "phone"), hash_key=KEY)
    client = make_client(durability=durability, otlp_endpoint=receiver.endpoint, redact=redact)
    order_id, refund_id = _record_personal_data(client)
    assert client.flush()
    assert _wal_exists(ledger_target)  # checked before any checkpoint...
    assert _leaks(_ledger_bytes(ledger_target)) == []
    assert _leaks(b"".join(receiver.bodies)) == []

    hashed_email, hashed_name = redact.pseudonym(EMAIL), redact.pseudonym(NAME)
    assert hashed_email.startswith("hmac-sha256:") and len(hashed_email) == 12 + 64
    order = client.get_event(order_id)
    assert order is not None and order.actor is not None and order.decision is not None
    assert (order.actor.email, order.actor.name) == (hashed_email, hashed_name)
    assert order.actor.metadata == {"backup_email": hashed_email}
    assert order.decision.context == {
        "customer_email": hashed_email,
        "people": [{"Email": hashed_email, "phone": redact.pseudonym(PHONE)}],
        "contact": {"email": hashed_email, "tier": "gold"},
    }
    assert order.decision.alternatives == ({"action": "call", "contact-email": hashed_email},)
    assert order.objects[0].state_after == {"billing.email": hashed_email}
    assert order.objects[1].state["tier"] == "gold"
    assert order.metadata == {"notify_email": hashed_email, "channel": "web"}
    # The same person keeps the same pseudonym, so their events can still be found.
    assert [e.id for e in client.query(actor_ids=["cust-1"], order="asc")] == [
        order_id,
        refund_id,
    ]
    refund = client.get_event(refund_id)
    assert refund is not None and refund.actor is not None
    assert refund.actor.email == hashed_email

    client.close()  # ...and after the checkpoint
    assert _leaks(_ledger_bytes(ledger_target)) == []
    spans = receiver.attributes()
    assert {s["@name"] for s in spans} == {"order.created", "refund.requested"}
    for span in spans:
        assert span["user.email"] == f'string_value: "{hashed_email}"'
        assert span["user.name"] == f'string_value: "{hashed_name}"'


def test_dropping_personal_data_by_default_drops_email_only(
    make_client: Callable[..., DecisionTraceClient], ledger_target: str, receiver: Receiver
) -> None:
    client = make_client(otlp_endpoint=receiver.endpoint, redact=Redaction())
    order_id, _ = _record_personal_data(client)
    assert client.flush()
    for data in (_ledger_bytes(ledger_target), b"".join(receiver.bodies)):
        assert b"Example.org" not in data and b"example" not in data
        assert b"Annabelle" in data  # names are kept unless asked for
    order = client.get_event(order_id)
    assert order is not None and order.actor is not None and order.decision is not None
    assert order.actor.email is None
    assert order.actor.name == NAME
    assert order.actor.metadata == {}
    assert order.decision.context == {
        "people": [{"phone": PHONE}],
        "contact": {"tier": "gold"},
    }
    assert order.metadata == {"channel": "web"}
    for span in receiver.attributes():
        assert "user.email" not in span


def test_redaction_arguments_are_checked() -> None:
    with pytest.raises(InvalidInputError, match="redact"):
        DecisionTraceClient(redact="email")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match=r"redact\.fields"):
        Redaction(fields="email")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match=r"redact\.hash_key"):
        Redaction(hash_key="text")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match=r"redact\.hash_key"):
        Redaction().pseudonym(EMAIL)
    assert Redaction(hash_key=b"k").pseudonym("a") != Redaction(hash_key=b"j").pseudonym("a")


# Every spelling of a key about e-mail docs/guarantees.md promises to cover, each with its own
# address so that a leak names the case that leaked.
KEY_SPELLINGS = {
    "customerEmail": "camel.case@example.net",
    "email_address": "snake.suffix@example.net",
    "EmailAddress": "pascal.case@example.net",
    "billing.email": "dotted.key@example.net",
    "CONTACT-EMAIL": "kebab.upper@example.net",
    "HTTPEmail": "acronym.first@example.net",
}
LISTED = ["listed.first@example.net", "listed.second@example.net"]
NESTED = "nested.inside@example.net"
REJECTED = "rejection.reason@example.net"
KEPT = {"emailed": "2024-01-02", "e_mail_count": 3, "gmail_hint": "visible-token"}


def _record_key_spellings(client: DecisionTraceClient) -> str:
    context: dict[str, object] = dict(KEY_SPELLINGS)
    context.update(KEPT)
    return (
        client.trace("order.created", "Order placed")
        .by_user("cust-9", customerEmail=KEY_SPELLINGS["customerEmail"])
        .affecting_customer("cust-9", {"backupEmails": LISTED, "emailVerified": True})
        .because(
            "spellings",
            context=context,
            alternatives=[{"action": "notify", "contactEmails": {"work": NESTED, "n": [NESTED]}}],
            rejection_reasons={"notify": "customer opted out", "customer_email": REJECTED},
        )
        .with_metadata(notify={"customer": {"emailAddress": NESTED}})
        .record()
    )


def _plaintexts() -> list[bytes]:
    return [v.encode() for v in [*KEY_SPELLINGS.values(), *LISTED, NESTED, REJECTED]]


@pytest.mark.parametrize("durability", ["batch", "sync"])
def test_camel_snake_dotted_keys_lists_and_rejection_reasons_are_hashed(
    make_client: Callable[..., DecisionTraceClient],
    ledger_target: str,
    receiver: Receiver,
    durability: str,
) -> None:
    redact = Redaction(hash_key=KEY)
    client = make_client(durability=durability, otlp_endpoint=receiver.endpoint, redact=redact)
    event_id = _record_key_spellings(client)
    assert client.flush()
    for data in (_ledger_bytes(ledger_target), b"".join(receiver.bodies)):
        assert [p for p in _plaintexts() if p in data] == []
        assert b"visible-token" in data  # what is not matched is kept

    event = client.get_event(event_id)
    assert event is not None and event.actor is not None and event.decision is not None
    h = redact.pseudonym
    assert event.actor.metadata == {"customerEmail": h(KEY_SPELLINGS["customerEmail"])}
    assert event.decision.context == {key: h(value) for key, value in KEY_SPELLINGS.items()} | KEPT
    # Each item of a list, each value of a nested mapping: one person, one pseudonym.
    assert event.objects[0].state == {"backupEmails": [h(v) for v in LISTED], "emailVerified": True}
    assert event.decision.alternatives == (
        {"action": "notify", "contactEmails": {"work": h(NESTED), "n": [h(NESTED)]}},
    )
    assert event.decision.rejection_reasons == {
        "notify": "customer opted out",
        "customer_email": h(REJECTED),
    }
    assert event.metadata == {"notify": {"customer": {"emailAddress": h(NESTED)}}}
    assert h(NESTED).startswith("hmac-sha256:") and len(h(NESTED)) == 12 + 64

    client.close()
    assert [p for p in _plaintexts() if p in _ledger_bytes(ledger_target)] == []


def test_without_a_key_every_spelling_is_dropped(
    make_client: Callable[..., DecisionTraceClient], ledger_target: str, receiver: Receiver
) -> None:
    client = make_client(otlp_endpoint=receiver.endpoint, redact=Redaction())
    event_id = _record_key_spellings(client)
    assert client.flush()
    for data in (_ledger_bytes(ledger_target), b"".join(receiver.bodies)):
        assert [p for p in _plaintexts() if p in data] == []
    event = client.get_event(event_id)
    assert event is not None and event.actor is not None and event.decision is not None
    assert event.actor.metadata == {}
    assert event.decision.context == KEPT
    assert event.objects[0].state == {"emailVerified": True}
    assert event.decision.alternatives == ({"action": "notify"},)
    assert event.decision.rejection_reasons == {"notify": "customer opted out"}
    assert event.metadata == {"notify": {"customer": {}}}


@pytest.mark.parametrize(
    ("field", "covered", "not_covered"),
    [
        (
            "email",
            [
                "email",
                "Email",
                "customerEmail",
                "email_address",
                "EmailAddress",
                "billing.email",
                "contact-email",
                "emails",
                "backupEmails",
                "HTTPEmail",
                "email2",
                "email_verified",
                "customer email",
            ],
            ["emailed", "e_mail", "mail", "gmail", "emailaddr", "remail", "name"],
        ),
        (
            "phoneNumber",
            ["phone_number", "customerPhoneNumber", "phone-numbers", "PHONE_NUMBER"],
            ["phone", "number", "phonenumber", "number_phone"],
        ),
        ("name", ["name", "firstName", "user_name", "names"], ["namespace", "renamed"]),
    ],
)
def test_which_keys_a_field_covers(field: str, covered: list[str], not_covered: list[str]) -> None:
    """The rules docs/guarantees.md states, key by key."""
    redaction = Redaction(fields=(field,))
    assert [key for key in covered if not redaction.covers(key)] == []
    assert [key for key in not_covered if redaction.covers(key)] == []
