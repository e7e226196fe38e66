"""Signed checkpoints of a ledger's chain (docs/proving.md): a short text that states how
far the chain reached at one moment and its head hash, signed with an Ed25519 key kept
away from the ledger. Whoever could rewrite the ledger cannot forge a checkpoint, so a
chain rebuilt after the fact no longer reaches it
(:func:`~decision_trace.integrity.verify_entries`).

Signing needs the ``cryptography`` package, which comes with the audit extra
(``pip install 'decision-trace-otel[audit]'``); it is imported only when a key is made,
read or used, so the rest of decision-trace never needs it.

The format, version 1 (UTF-8; every line ends with ``"\\n"``)::

    decision-trace checkpoint 1
    ledger: <ledger id>
    position: <position of the chain's head entry, decimal>
    entries: <chain entries up to and including it, decimal>
    hash: <the head entry's hash, 64 lowercase hex digits>
    time: <when, UTC ISO 8601 with microseconds and Z: 2026-12-02T09:30:00.123456Z>
    time-ns: <when, nanoseconds since the epoch, decimal>
    key: <the signing key's id, see key_id()>
    signature: <base64, standard alphabet with padding, of the Ed25519 signature>

The signature covers the UTF-8 bytes of the eight lines above it, each with its
``"\\n"``. Integers have no sign (except a time before 1970), no leading zeros and no
spaces; ``time`` must be ``time-ns`` written out. Reading accepts ``"\\r\\n"`` line ends
and blank lines after the signature, nothing else.

Keys are files: the private key as unencrypted PKCS #8 PEM (mode 0600; a key readable
by others is refused, as ssh does), the public key as SubjectPublicKeyInfo PEM. Example::

    private, public = generate_key_pair(Path("ledger.key"))
    text = format_checkpoint(checkpoint, load_private_key(private))
    write_checkpoint_file(Path("checkpoints/"), text)
    checkpoint = read_checkpoint_file(path, load_public_key(public))
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import os
import re
import shlex
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CheckpointError
from .integrity import Checkpoint
from .record import MAX_NS, MIN_NS, datetime_from_ns

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    from .storage import Ledger

_logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION",
    "BackgroundCheckpointer",
    "SignedCheckpoint",
    "checkpoint_ledger",
    "format_checkpoint",
    "generate_key_pair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "parse_checkpoint",
    "read_checkpoint_file",
    "verify_checkpoint",
    "write_checkpoint_file",
]

FORMAT_VERSION = 1
"""The version of the checkpoint text :func:`format_checkpoint` writes."""

_MAGIC = "decision-trace checkpoint"
_AUDIT_EXTRA = "pip install 'decision-trace-otel[audit]'"


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint text read by :func:`parse_checkpoint`, not yet verified."""

    checkpoint: Checkpoint
    key_id: str
    """The id of the key that claims to have signed it (:func:`key_id`)."""
    signature: bytes
    signed_text: str
    """The lines the signature covers (with ``"\\n"`` line ends)."""


def _need_cryptography(what: str) -> None:
    """Make sure ``cryptography`` can be imported, or raise a clear error naming the extra."""
    try:
        import cryptography.hazmat.primitives.asymmetric.ed25519  # noqa: F401
    except ImportError as exc:
        raise CheckpointError(
            f"{what} needs the cryptography package, which comes with the audit extra: "
            f"{_AUDIT_EXTRA}"
        ) from exc


# -- keys --------------------------------------------------------------------------------


def generate_key_pair(
    private_path: str | os.PathLike[str],
    public_path: str | os.PathLike[str] | None = None,
    *,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Make a new Ed25519 key pair for signing checkpoints.

    Args:
        private_path: Where to write the private key (unencrypted PKCS #8 PEM), created
            with mode 0600. Keep it away from the ledger: whoever holds it can sign.
        public_path: Where to write the public key (SubjectPublicKeyInfo PEM, mode 0644);
            by default ``private_path`` followed by ``.pub``.
        overwrite: Replace existing key files (the old private key is lost).

    Returns:
        ``(private key path, public key path)``.

    Raises:
        CheckpointError: A key file exists already (and ``overwrite`` is false), its
            folder does not exist or cannot be written, or ``cryptography`` is missing.
    """
    private = Path(private_path)
    public = Path(public_path) if public_path is not None else Path(f"{private}.pub")
    _need_cryptography("generating a signing key")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if private.resolve() == public.resolve():
        raise CheckpointError(f"the private and public key paths are the same: {private}")
    for path in (private, public):
        if not path.parent.is_dir():
            raise CheckpointError(f"cannot write {path}: folder {path.parent} does not exist")
        if not overwrite and (path.exists() or path.is_symlink()):
            raise CheckpointError(
                f"{path} already exists; refusing to overwrite a key (remove it, or "
                "choose to overwrite)"
            )
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(private, private_pem, 0o600, overwrite=overwrite)
    try:
        _write_new(public, public_pem, 0o644, overwrite=overwrite)
    except CheckpointError:
        with contextlib.suppress(OSError):
            private.unlink()
        raise
    return private, public


def _write_new(path: Path, data: bytes, mode: int, *, overwrite: bool) -> None:
    """Write a key file created with ``mode`` from the start (never readable by others
    on the way): in place when it must be new, through a temporary file and a rename
    when it replaces one."""
    target = path
    try:
        if overwrite:  # mkstemp creates its file with mode 0600
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            target = Path(name)
        else:
            flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_BINARY", 0)
            fd = os.open(target, flags, mode)
    except FileExistsError:
        raise CheckpointError(f"{path} already exists; refusing to overwrite a key") from None
    except OSError as exc:
        raise CheckpointError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(target, mode)
        if overwrite:
            os.replace(target, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            target.unlink()
        raise CheckpointError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _read_key_file(path: Path, what: str) -> tuple[bytes, int]:
    """The bytes of a key file and its mode (of the file read)."""
    try:
        with path.open("rb") as file:
            return file.read(), os.fstat(file.fileno()).st_mode
    except FileNotFoundError:
        raise CheckpointError(f"no {what} at {path}: the file does not exist") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a folder, not a {what} file") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc


def _kind(key: object, suffix: str) -> str:
    return type(key).__name__.lstrip("_").removesuffix(suffix) or type(key).__name__


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Read a private key written by :func:`generate_key_pair`.

    Raises:
        CheckpointError: The file is missing, readable or writable by group or others
            (``chmod 600`` it), not a PEM private key, encrypted, or not an Ed25519 key;
            or ``cryptography`` is missing.
    """
    path = Path(path)
    _need_cryptography("reading a signing key")
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    data, mode = _read_key_file(path, "private key")
    if b"PUBLIC KEY-----" in data:
        raise CheckpointError(f"{path} holds a public key; a private key is needed to sign")
    if os.name == "posix" and mode & 0o077:
        raise CheckpointError(
            f"the private key {path} is accessible by others (mode {mode & 0o777:04o}); "
            f"it must be readable by its owner only: chmod 600 {shlex.quote(str(path))}"
        )
    try:
        key = load_pem_private_key(data, password=None)
    except TypeError:  # encrypted
        raise CheckpointError(
            f"{path} is an encrypted private key; checkpoint keys are unencrypted (protect "
            "the file instead)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise CheckpointError(f"{path} is not a PEM private key (PKCS #8)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CheckpointError(
            f"{path} is not an Ed25519 key (it holds a key of type {_kind(key, 'PrivateKey')}); "
            "checkpoints are signed with Ed25519 keys (generate_key_pair makes one)"
        )
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Read a public key written by :func:`generate_key_pair`.

    Raises:
        CheckpointError: The file is missing, holds a private key, is not a PEM public
            key, or not an Ed25519 key; or ``cryptography`` is missing.
    """
    path = Path(path)
    _need_cryptography("reading a public key")
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    data, _ = _read_key_file(path, "public key")
    if b"PRIVATE KEY-----" in data:
        raise CheckpointError(
            f"{path} holds a private key; give its public key instead (never hand out the "
            "private one)"
        )
    try:
        key = load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise CheckpointError(f"{path} is not a PEM public key (SubjectPublicKeyInfo)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise CheckpointError(
            f"{path} is not an Ed25519 key (it holds a key of type {_kind(key, 'PublicKey')}); "
            "checkpoints are signed with Ed25519 keys"
        )
    return key


def key_id(public_key: Ed25519PublicKey) -> str:
    """The id of a public key: the first 16 hex digits of SHA-256 of its raw 32 bytes."""
    _need_cryptography("a key id")
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# -- the text ----------------------------------------------------------------------------


def _iso(at_ns: int) -> str:
    return datetime_from_ns(at_ns).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _check_fields(cp: Checkpoint) -> None:
    if not isinstance(cp.ledger_id, str) or not cp.ledger_id:
        raise CheckpointError(f"ledger_id: must be a non-empty string, got {cp.ledger_id!r}")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029" for c in cp.ledger_id):
        raise CheckpointError(f"ledger_id: must not hold control characters: {cp.ledger_id!r}")
    for name in ("position", "entries"):
        value = getattr(cp, name)
        if type(value) is not int or value < 0:
            raise CheckpointError(f"{name}: must be an integer >= 0, got {value!r}")
    if not isinstance(cp.hash, bytes) or len(cp.hash) != 32:
        raise CheckpointError(f"hash: must be 32 bytes, got {cp.hash!r}")
    if type(cp.at_ns) is not int or not MIN_NS <= cp.at_ns <= MAX_NS:
        raise CheckpointError(f"at_ns: must be a 64-bit integer, got {cp.at_ns!r}")


def _body(cp: Checkpoint, signer: str) -> str:
    return (
        f"{_MAGIC} {FORMAT_VERSION}\n"
        f"ledger: {cp.ledger_id}\n"
        f"position: {cp.position}\n"
        f"entries: {cp.entries}\n"
        f"hash: {cp.hash.hex()}\n"
        f"time: {_iso(cp.at_ns)}\n"
        f"time-ns: {cp.at_ns}\n"
        f"key: {signer}\n"
    )


def format_checkpoint(cp: Checkpoint, private_key: Ed25519PrivateKey) -> str:
    """The signed text of a checkpoint (the format is in the module's docstring).

    Raises:
        CheckpointError: A field cannot be written (an empty ledger id or one with
            control characters, a negative position, a hash that is not 32 bytes), the
            key is not an Ed25519 private key, or ``cryptography`` is missing.
    """
    _need_cryptography("signing a checkpoint")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if not isinstance(private_key, Ed25519PrivateKey):
        raise CheckpointError(
            f"checkpoints are signed with an Ed25519 private key, got {type(private_key).__name__}"
        )
    _check_fields(cp)
    body = _body(cp, key_id(private_key.public_key()))
    signature = private_key.sign(body.encode())
    return f"{body}signature: {base64.b64encode(signature).decode('ascii')}\n"


_UINT = r"0|[1-9][0-9]*"
_FIELDS: tuple[tuple[str, str, str], ...] = (
    # (name, pattern of the value, what is expected, as an error says it)
    ("ledger", r"[^\x00-\x1f\x7f-\x9f\u2028\u2029]+", "the ledger id"),
    ("position", _UINT, "a decimal integer"),
    ("entries", _UINT, "a decimal integer"),
    ("hash", r"[0-9a-f]{64}", "64 lowercase hex digits"),
    ("time", r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z", "UTC time"),
    ("time-ns", rf"-?(?:{_UINT})", "a decimal integer"),
    ("key", r"[0-9a-f]{16}", "16 lowercase hex digits"),
    ("signature", r"[A-Za-z0-9+/]{86}==", "the base64 of a 64-byte Ed25519 signature"),
)


def parse_checkpoint(text: str) -> SignedCheckpoint:
    """Read a checkpoint text, strictly (the format is in the module's docstring). The
    signature is not checked here: :func:`verify_checkpoint` does.

    Raises:
        CheckpointError: The text is not a checkpoint of a known version: the message
            names the line and what was expected there.
    """
    lines = text.replace("\r\n", "\n").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()

    def line(number: int) -> str:
        if number > len(lines):
            raise CheckpointError(f"checkpoint line {number}: {expected(number)}, found the end")
        return lines[number - 1]

    def expected(number: int) -> str:
        if number == 1:
            return f"expected {_MAGIC + ' ' + str(FORMAT_VERSION)!r}"
        name, _, what = _FIELDS[number - 2]
        return f"expected '{name}: <{what}>'"

    first = line(1)
    if first != f"{_MAGIC} {FORMAT_VERSION}":
        version = first.removeprefix(f"{_MAGIC} ")
        if first.startswith(f"{_MAGIC} ") and re.fullmatch(r"[0-9]+", version):
            raise CheckpointError(
                f"checkpoint line 1: format version {version} is not known (expected "
                f"{FORMAT_VERSION}): it was written by a newer decision-trace"
            )
        raise CheckpointError(
            f"checkpoint line 1: {expected(1)}, found {first[:80]!r}: not a decision-trace "
            "checkpoint"
        )
    values: dict[str, str] = {}
    for number, (name, pattern, _) in enumerate(_FIELDS, start=2):
        found = line(number)
        prefix = f"{name}: "
        if not found.startswith(prefix) or not re.fullmatch(pattern, found[len(prefix) :]):
            raise CheckpointError(f"checkpoint line {number}: {expected(number)}, found {found!r}")
        values[name] = found[len(prefix) :]
    if len(lines) > len(_FIELDS) + 1:
        raise CheckpointError(
            f"checkpoint line {len(_FIELDS) + 2}: expected nothing after the signature, "
            f"found {lines[len(_FIELDS) + 1]!r}"
        )
    at_ns = int(values["time-ns"])
    if not MIN_NS <= at_ns <= MAX_NS:
        raise CheckpointError(f"checkpoint line 7: time-ns {at_ns} is out of range")
    if values["time"] != _iso(at_ns):
        raise CheckpointError(
            f"checkpoint line 6: time {values['time']} is not time-ns written out ({_iso(at_ns)})"
        )
    try:
        signature = base64.b64decode(values["signature"], validate=True)
    except binascii.Error:  # the pattern lets through bits after the last byte
        signature = b""
    if len(signature) != 64 or base64.b64encode(signature).decode() != values["signature"]:
        raise CheckpointError(f"checkpoint line 9: {expected(9)}, found {line(9)!r}")
    checkpoint = Checkpoint(
        ledger_id=values["ledger"],
        position=int(values["position"]),
        entries=int(values["entries"]),
        hash=bytes.fromhex(values["hash"]),
        at_ns=at_ns,
    )
    return SignedCheckpoint(
        checkpoint=checkpoint,
        key_id=values["key"],
        signature=signature,
        signed_text="".join(f"{x}\n" for x in lines[:8]),
    )


def verify_checkpoint(signed: SignedCheckpoint, public_key: Ed25519PublicKey) -> Checkpoint:
    """Check a checkpoint's signature; return the checkpoint once it is authentic.

    Raises:
        CheckpointError: Another key signed it, or the signature does not verify (the
            text was edited); or ``cryptography`` is missing.
    """
    _need_cryptography("verifying a checkpoint")
    from cryptography.exceptions import InvalidSignature

    mine = key_id(public_key)
    if signed.key_id != mine:
        raise CheckpointError(
            f"the checkpoint was signed by key {signed.key_id}, this public key is {mine}"
        )
    try:
        public_key.verify(signed.signature, signed.signed_text.encode())
    except InvalidSignature:
        raise CheckpointError(
            "the checkpoint's signature does not verify: it was edited or signed by another key"
        ) from None
    return signed.checkpoint


# -- files -------------------------------------------------------------------------------


def read_checkpoint_file(path: str | os.PathLike[str], public_key: Ed25519PublicKey) -> Checkpoint:
    """Read, parse and verify a checkpoint file.

    Raises:
        CheckpointError: The file cannot be read, is not a checkpoint, or does not
            verify with ``public_key``; the message starts with the path.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not a checkpoint (not UTF-8 text)") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read the checkpoint {path}: {exc.strerror}") from exc
    try:
        return verify_checkpoint(parse_checkpoint(text), public_key)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def write_checkpoint_file(path: str | os.PathLike[str], text: str) -> Path:
    """Write a checkpoint text (checked with :func:`parse_checkpoint` first) atomically:
    a temporary file in the same folder, synced, then renamed over ``path``.

    Args:
        path: The file to write (replaced if it exists), or a folder: the file is then
            ``checkpoint-<position>-<YYYYmmddTHHMMSS>Z.txt`` in it, named after the
            checkpoint's position and time. A checkpoint never replaces another in a
            folder; writing the same text twice is harmless.
        text: The text :func:`format_checkpoint` made.

    Returns:
        The path written.

    Raises:
        CheckpointError: ``text`` is not a checkpoint, the folder does not exist, the
            folder already holds another checkpoint under that name, or the file cannot
            be written.
    """
    path = Path(path)
    checkpoint = parse_checkpoint(text).checkpoint
    into_folder = path.is_dir()
    if into_folder:
        stamp = datetime_from_ns(checkpoint.at_ns).strftime("%Y%m%dT%H%M%S")
        path = path / f"checkpoint-{checkpoint.position}-{stamp}Z.txt"
        if path.exists():
            try:
                same = path.read_bytes() == text.encode()
            except OSError:
                same = False
            if same:
                return path
            raise CheckpointError(
                f"{path} already exists and holds another checkpoint; not replacing it"
            )
    if not path.parent.is_dir():
        raise CheckpointError(f"cannot write {path}: folder {path.parent} does not exist")
    data = text.encode()
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise CheckpointError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(name, 0o644)
        os.replace(name, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise CheckpointError(f"cannot write {path}: {exc.strerror or exc}") from exc
    _sync_folder(path.parent)
    return path


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; elsewhere a no-op)."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def checkpoint_ledger(ledger: Ledger, private_key: Ed25519PrivateKey, out: Path) -> Path:
    """Sign where ``ledger``'s chain stands now and write it to ``out`` (a file, or a
    folder: see :func:`write_checkpoint_file`); return the file written."""
    import time

    state = ledger.chain_state()
    cp = Checkpoint(state.ledger_id, state.position, state.entries, state.hash, time.time_ns())
    return write_checkpoint_file(out, format_checkpoint(cp, private_key))


class BackgroundCheckpointer:
    """A daemon thread that writes a signed checkpoint into ``folder`` once ``every``
    more events were written, or ``interval_s`` passed with some written (what
    ``DecisionTraceClient(checkpoint_key=...)`` runs). Its errors are logged, never
    raised into the application.

    Args:
        ledger: The ledger whose chain is signed.
        private_key: The signing key.
        folder: Where the checkpoints go (made if missing, mode 0700).
        written: How many events this process has written so far (a cheap counter).
        every: Events between checkpoints; None for no count limit.
        interval_s: Seconds between checkpoints; None for no time limit.
    """

    _POLL_S = 0.5

    def __init__(
        self,
        ledger: Ledger,
        private_key: Ed25519PrivateKey,
        folder: Path,
        written: Callable[[], int],
        *,
        every: int | None,
        interval_s: float | None,
    ) -> None:
        import threading
        import time

        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._ledger = ledger
        self._key = private_key
        self._folder = folder
        self._written = written
        self._every = every
        self._interval_s = interval_s
        self._last_count = written()
        self._last_time = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.written: list[Path] = []
        """The checkpoint files written, oldest first."""
        self._thread = threading.Thread(
            target=self._run, name="decision-trace-checkpoint", daemon=True
        )
        self._thread.start()

    def _due(self) -> bool:
        import time

        count = self._written()
        if count == self._last_count:
            return False
        if self._every is not None and count - self._last_count >= self._every:
            return True
        return (
            self._interval_s is not None and time.monotonic() - self._last_time >= self._interval_s
        )

    def checkpoint_now(self) -> Path | None:
        """Write a checkpoint now if events were written since the last one; return its
        file (None if nothing new, or on an error, which is logged)."""
        import time

        with self._lock:
            count = self._written()
            if count == self._last_count:
                return None
            try:
                path = checkpoint_ledger(self._ledger, self._key, self._folder)
            except Exception as exc:  # never into the application
                _logger.warning("decision-trace could not write a checkpoint: %s", exc)
                return None
            self._last_count, self._last_time = count, time.monotonic()
            self.written.append(path)
            return path

    def _run(self) -> None:
        while not self._stop.wait(self._POLL_S):
            if self._due():
                self.checkpoint_now()

    def close(self, timeout_s: float) -> None:
        """Stop the thread (waiting at most ``timeout_s``), then write a last checkpoint
        of what was written since the previous one."""
        self._stop.set()
        self._thread.join(max(0.0, timeout_s))
        self.checkpoint_now()
