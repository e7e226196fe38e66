"""Signed checkpoints (decision_trace.checkpoint): keys, the text, its signature, files."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from decision_trace.checkpoint import (
    SignedCheckpoint,
    format_checkpoint,
    generate_key_pair,
    key_id,
    load_private_key,
    load_public_key,
    parse_checkpoint,
    read_checkpoint_file,
    verify_checkpoint,
    write_checkpoint_file,
)
from decision_trace.errors import CheckpointError, DecisionTraceError
from decision_trace.integrity import Checkpoint

AT_NS = 1_796_203_800_123_456_789  # 2026-12-02T09:30:00.123456789Z
CHECKPOINT = Checkpoint(
    ledger_id="ledger-7f3a", position=1234, entries=1230, hash=bytes(range(32)), at_ns=AT_NS
)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return generate_key_pair(tmp_path / "ledger.key")


@pytest.fixture
def signed_text(keys: tuple[Path, Path]) -> str:
    return format_checkpoint(CHECKPOINT, load_private_key(keys[0]))


def _verify(text: str, public: Path) -> Checkpoint:
    return verify_checkpoint(parse_checkpoint(text), load_public_key(public))


def test_round_trip(keys: tuple[Path, Path], signed_text: str) -> None:
    private, public = keys
    assert public == private.with_name("ledger.key.pub")
    kid = key_id(load_public_key(public))
    assert re.fullmatch(r"[0-9a-f]{16}", kid)
    assert kid == key_id(load_private_key(private).public_key())
    lines = signed_text.split("\n")
    assert lines[:8] == [
        "decision-trace checkpoint 1",
        "ledger: ledger-7f3a",
        "position: 1234",
        "entries: 1230",
        f"hash: {bytes(range(32)).hex()}",
        "time: 2026-12-02T09:30:00.123456Z",
        f"time-ns: {AT_NS}",
        f"key: {kid}",
    ]
    assert re.fullmatch(r"signature: [A-Za-z0-9+/]{86}==", lines[8])
    assert lines[9:] == [""]
    signed = parse_checkpoint(signed_text)
    assert isinstance(signed, SignedCheckpoint)
    assert signed.key_id == kid
    assert len(signed.signature) == 64
    assert signed.signed_text == "\n".join(lines[:8]) + "\n"
    assert verify_checkpoint(signed, load_public_key(public)) == CHECKPOINT


def test_tolerated_line_ends_and_trailing_blank_lines(
    keys: tuple[Path, Path], signed_text: str
) -> None:
    for text in (
        signed_text.replace("\n", "\r\n"),
        signed_text + "\n\n  \n",
        signed_text.rstrip("\n"),
    ):
        assert _verify(text, keys[1]) == CHECKPOINT


def test_time_before_1970_round_trips(keys: tuple[Path, Path]) -> None:
    cp = Checkpoint("l", 0, 0, bytes(32), -1_500)
    text = format_checkpoint(cp, load_private_key(keys[0]))
    assert "time: 1969-12-31T23:59:59.999998Z\ntime-ns: -1500\n" in text
    assert _verify(text, keys[1]) == cp


def test_key_file_modes(keys: tuple[Path, Path]) -> None:
    private, public = keys
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----\n")


def test_refuses_to_overwrite_keys(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    private, public = keys
    before = private.read_bytes(), public.read_bytes()
    with pytest.raises(CheckpointError, match=r"ledger\.key already exists; refusing"):
        generate_key_pair(private)
    # the public key alone existing is refused too, before anything is written
    other = tmp_path / "other.key"
    with pytest.raises(CheckpointError, match=r"ledger\.key\.pub already exists"):
        generate_key_pair(other, public)
    assert not other.exists()
    assert (private.read_bytes(), public.read_bytes()) == before
    generate_key_pair(private, overwrite=True)
    assert private.read_bytes() != before[0]
    assert public.read_bytes() != before[1]
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.key", "ledger.key.pub"]


def test_key_folder_must_exist(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"folder .*missing does not exist"):
        generate_key_pair(tmp_path / "missing" / "k")
    with pytest.raises(CheckpointError, match=r"folder .*nowhere does not exist"):
        generate_key_pair(tmp_path / "k", tmp_path / "nowhere" / "k.pub")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_refuses_a_private_key_readable_by_others(keys: tuple[Path, Path]) -> None:
    private = keys[0]
    private.chmod(0o640)
    with pytest.raises(CheckpointError, match=rf"mode 0640.*chmod 600 {re.escape(str(private))}"):
        load_private_key(private)
    private.chmod(0o604)
    with pytest.raises(CheckpointError, match="chmod 600"):
        load_private_key(private)
    private.chmod(0o400)
    load_private_key(private)


def _write_pem(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_wrong_keys_are_refused(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    private, public = keys
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_private = _write_pem(
        tmp_path / "rsa.key",
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    rsa_public = _write_pem(
        tmp_path / "rsa.pub",
        rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    ec_public = _write_pem(
        tmp_path / "ec.pub",
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    )
    encrypted = _write_pem(
        tmp_path / "encrypted.key",
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        ),
    )
    garbage = _write_pem(tmp_path / "garbage.key", b"not a key at all\n")
    cases = [
        (load_private_key, rsa_private, "not an Ed25519 key .*RSA"),
        (load_public_key, rsa_public, "not an Ed25519 key .*RSA"),
        (load_public_key, ec_public, r"not an Ed25519 key .*type EC\)"),
        (load_private_key, public, "holds a public key"),
        (load_public_key, private, "holds a private key"),
        (load_private_key, encrypted, "encrypted private key"),
        (load_private_key, garbage, "not a PEM private key"),
        (load_public_key, garbage, "not a PEM public key"),
        (load_private_key, tmp_path / "absent.key", "no private key at .*does not exist"),
        (load_public_key, tmp_path / "absent.pub", "no public key at .*does not exist"),
        (load_public_key, tmp_path, "is a folder"),
    ]
    for load, path, message in cases:
        with pytest.raises(CheckpointError, match=message):
            load(path)
    with pytest.raises(CheckpointError, match="Ed25519 private key, got"):
        format_checkpoint(CHECKPOINT, rsa_key)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "old", "new"),
    [
        ("ledger", "ledger: ledger-7f3a", "ledger: ledger-7f3b"),
        ("position", "position: 1234", "position: 1235"),
        ("position", "position: 1234", "position: 234"),
        ("entries", "entries: 1230", "entries: 1231"),
        ("hash", "hash: 00010203", "hash: 00010204"),
        ("hash", "1d1e1f\n", "1d1e1e\n"),
        ("time-ns", f"time-ns: {AT_NS}", f"time-ns: {AT_NS + 1}"),
        ("time-ns+time", "", ""),  # filled in below: both lines moved one microsecond
        ("signature", "signature: ", "signature: A"),
    ],
)
def test_any_edit_fails_verification(
    keys: tuple[Path, Path], signed_text: str, field: str, old: str, new: str
) -> None:
    if field == "time-ns+time":
        old = f"time: 2026-12-02T09:30:00.123456Z\ntime-ns: {AT_NS}"
        new = f"time: 2026-12-02T09:30:00.123457Z\ntime-ns: {AT_NS + 1000}"
    if field == "signature":  # a different, well-formed signature: its first byte changed
        line = signed_text.split("\n")[8]
        old = line
        new = "signature: " + ("B" if line[11] == "A" else "A") + line[12:]
    assert signed_text.count(old) == 1
    edited = signed_text.replace(old, new)
    assert edited != signed_text
    with pytest.raises(CheckpointError, match="signature does not verify: it was edited"):
        _verify(edited, keys[1])


def test_another_key_fails_with_the_key_ids(
    tmp_path: Path, keys: tuple[Path, Path], signed_text: str
) -> None:
    _, other_public = generate_key_pair(tmp_path / "other.key")
    mine = key_id(load_public_key(keys[1]))
    theirs = key_id(load_public_key(other_public))
    with pytest.raises(CheckpointError, match=f"signed by key {mine}, this public key is {theirs}"):
        _verify(signed_text, other_public)
    # claiming the other key in the text does not help: the signature is not theirs
    forged = signed_text.replace(f"key: {mine}", f"key: {theirs}")
    with pytest.raises(CheckpointError, match="signature does not verify"):
        _verify(forged, other_public)


def _replace_line(text: str, number: int, new: str | None) -> str:
    lines = text.split("\n")
    if new is None:
        del lines[number - 1]
    else:
        lines[number - 1] = new
    return "\n".join(lines)


@pytest.mark.parametrize(
    ("number", "new", "message"),
    [
        (1, "decision-trace checkpoint 2", "line 1: format version 2 is not known"),
        (1, "a shopping list", "line 1: expected 'decision-trace checkpoint 1'"),
        (1, "", "line 1: expected 'decision-trace checkpoint 1'"),
        (2, "ledger: ", "line 2: expected 'ledger: <the ledger id>'"),
        (2, "ledger:x", "line 2: expected 'ledger: "),
        (3, "position: 01234", "line 3: expected 'position: <a decimal integer>'"),
        (3, "position: +1234", "line 3: expected 'position: "),
        (3, "position: -1", "line 3: expected 'position: "),
        (3, "position:  1234", "line 3: expected 'position: "),
        (3, "entries: 1230", "line 3: expected 'position: "),
        (4, "entries: 1_230", "line 4: expected 'entries: <a decimal integer>'"),
        (4, "entries: \uff11\uff12\uff13", "line 4: expected 'entries: "),
        (5, "hash: " + "AB" * 32, "line 5: expected 'hash: <64 lowercase hex digits>'"),
        (5, "hash: " + "ab" * 31, "line 5: expected 'hash: "),
        (6, "time: 2026-12-02T09:30:00Z", "line 6: expected 'time: <UTC time>'"),
        (6, "time: 2026-12-02T09:30:01.123456Z", "line 6: time .* is not time-ns written out"),
        (7, "time-ns: 1e18", "line 7: expected 'time-ns: <a decimal integer>'"),
        (7, f"time-ns: {2**63}", "line 7: time-ns .* is out of range"),
        (8, "key: xyz", "line 8: expected 'key: <16 lowercase hex digits>'"),
        (9, "signature: abc=", "line 9: expected 'signature: <the base64"),
        (9, "signature: " + "A" * 85 + "B==", "line 9: expected 'signature: "),
        (9, None, "line 9: expected 'signature: .*found the end"),
        (10, "extra: 1", "line 10: expected nothing after the signature"),
        (4, None, "line 4: expected 'entries: "),
        (3, "", "line 3: expected 'position: "),
    ],
)
def test_malformed_texts_name_the_line(
    signed_text: str, number: int, new: str | None, message: str
) -> None:
    with pytest.raises(CheckpointError, match=f"checkpoint {message}"):
        parse_checkpoint(_replace_line(signed_text, number, new))


def test_malformed_whole_texts() -> None:
    for text in ("", "\n\n", "\r\n"):
        with pytest.raises(CheckpointError, match=r"line 1: .*found the end"):
            parse_checkpoint(text)


def test_bad_fields_are_not_signed(keys: tuple[Path, Path]) -> None:
    private = load_private_key(keys[0])
    for cp, message in [
        (Checkpoint("", 1, 1, bytes(32), 0), "ledger_id: must be a non-empty"),
        (Checkpoint("a\nb", 1, 1, bytes(32), 0), "ledger_id: must not hold control"),
        (Checkpoint("l", -1, 1, bytes(32), 0), "position: must be an integer >= 0"),
        (Checkpoint("l", 1, 1, bytes(31), 0), "hash: must be 32 bytes"),
        (Checkpoint("l", 1, 1, bytes(32), 2**63), "at_ns: must be a 64-bit integer"),
    ]:
        with pytest.raises(CheckpointError, match=message):
            format_checkpoint(cp, private)


def test_checkpoint_files(tmp_path: Path, keys: tuple[Path, Path], signed_text: str) -> None:
    public_key = load_public_key(keys[1])
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    written = write_checkpoint_file(folder, signed_text)
    assert written == folder / "checkpoint-1234-20261202T093000Z.txt"
    assert written.read_text() == signed_text
    assert read_checkpoint_file(written, public_key) == CHECKPOINT
    # the same checkpoint again: harmless; another one under the same name: refused
    assert write_checkpoint_file(folder, signed_text) == written
    other = format_checkpoint(
        Checkpoint("ledger-7f3a", 1234, 1230, bytes(32), AT_NS), load_private_key(keys[0])
    )
    with pytest.raises(CheckpointError, match="already exists and holds another checkpoint"):
        write_checkpoint_file(folder, other)
    assert written.read_text() == signed_text
    # a named file is replaced
    named = tmp_path / "head.txt"
    assert write_checkpoint_file(named, signed_text) == named
    assert write_checkpoint_file(named, other) == named
    assert named.read_text() == other
    assert sorted(p.name for p in folder.iterdir()) == [written.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoints",
        "head.txt",
        "ledger.key",
        "ledger.key.pub",
    ]
    with pytest.raises(CheckpointError, match="line 1"):
        write_checkpoint_file(tmp_path / "x.txt", "hello\n")
    with pytest.raises(CheckpointError, match=r"folder .*absent does not exist"):
        write_checkpoint_file(tmp_path / "absent" / "x.txt", signed_text)
    assert not (tmp_path / "x.txt").exists()


def test_reading_a_bad_checkpoint_file_names_it(
    tmp_path: Path, keys: tuple[Path, Path], signed_text: str
) -> None:
    public_key = load_public_key(keys[1])
    path = tmp_path / "cp.txt"
    path.write_text(signed_text.replace("entries: 1230", "entries: 1231"))
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: .*does not verify"):
        read_checkpoint_file(path, public_key)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(CheckpointError, match="not UTF-8"):
        read_checkpoint_file(path, public_key)
    with pytest.raises(CheckpointError, match="cannot read the checkpoint"):
        read_checkpoint_file(tmp_path / "absent.txt", public_key)


def test_checkpoint_error_is_a_decision_trace_error() -> None:
    assert issubclass(CheckpointError, DecisionTraceError)


def test_core_imports_without_cryptography(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys

        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name == "cryptography" or name.startswith("cryptography."):
                    raise ImportError(f"blocked: {name}")
                return None

        sys.meta_path.insert(0, Blocker())
        import decision_trace
        import decision_trace.checkpoint as checkpoint
        from decision_trace.errors import CheckpointError

        assert not any(m.split(".")[0] == "cryptography" for m in sys.modules)
        try:
            checkpoint.generate_key_pair(sys.argv[1])
        except CheckpointError as exc:
            print(exc)
        else:
            raise SystemExit("no CheckpointError")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "k")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "needs the cryptography package" in result.stdout
    assert "pip install 'decision-trace-otel[audit]'" in result.stdout
    assert list(tmp_path.iterdir()) == []
