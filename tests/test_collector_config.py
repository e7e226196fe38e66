"""collector-config/config.yaml: well-formed, self-consistent, and it covers our PII.

No collector runs here: these checks tie the configuration to what decision-trace
actually emits (the constants in ``decision_trace.attributes``).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from decision_trace import _encode
from decision_trace import attributes as keys
from decision_trace.models import DecisionTrace

CONFIG = Path(__file__).resolve().parent.parent / "collector-config" / "config.yaml"
SALT = "${env:DT_PII_SALT}"

# Attributes about a human actor: the semconv e-mail, name and id; the
# user's id and the decision_trace.actor.* copies of id and name identify the person too.
PERSONAL_KEYS = {keys.USER_EMAIL, keys.USER_NAME, keys.USER_ID}
USER_ACTOR_KEYS = {keys.ACTOR_ID, keys.ACTOR_NAME}
USER_ACTOR_DROPPED = {keys.ACTOR_METADATA}


def emitted_keys() -> set[str]:
    """Every attribute key constant in decision_trace.attributes."""
    return {
        value
        for name, value in vars(keys).items()
        if name.isupper()
        and isinstance(value, str)
        and re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", value) is not None
    }


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    loaded = yaml.safe_load(CONFIG.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _statements(config: dict[str, Any]) -> list[str]:
    statements: list[str] = []
    for name, processor in config["processors"].items():
        if name.split("/")[0] != "transform":
            continue
        for group in processor.get("trace_statements", []):
            assert group["context"] == "span"
            statements.extend(group["statements"])
    return statements


def test_is_well_formed_with_the_required_components(config: dict[str, Any]) -> None:
    assert set(config) >= {"receivers", "processors", "exporters", "service"}
    protocols = config["receivers"]["otlp"]["protocols"]
    assert set(protocols) == {"grpc", "http"}
    processor_types = {name.split("/")[0] for name in config["processors"]}
    assert {"memory_limiter", "batch", "transform"} <= processor_types
    exporter_types = {name.split("/")[0] for name in config["exporters"]}
    assert {"otlp", "file", "debug"} <= exporter_types
    assert config["exporters"]["otlp/backend"]["endpoint"]


def test_pipelines_use_only_defined_components_in_a_sane_order(config: dict[str, Any]) -> None:
    pipelines = config["service"]["pipelines"]
    assert "traces" in pipelines
    for pipeline in pipelines.values():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in config[kind], f"{component} is not defined in {kind}"
    for extension in config["service"].get("extensions", []):
        assert extension in config.get("extensions", {})
    processors = pipelines["traces"]["processors"]
    assert processors[0] == "memory_limiter"
    assert processors.index("transform/decision_pii") < processors.index("batch")
    # Every defined component is used (the collector warns about unused ones).
    used = {c for p in pipelines.values() for kind in p.values() for c in kind}
    for kind in ("receivers", "processors", "exporters"):
        assert set(config[kind]) <= used


def test_every_attribute_named_is_one_we_emit(config: dict[str, Any]) -> None:
    text = "\n".join(_statements(config))
    named = set(re.findall(r'attributes\["([^"]+)"\]', text))
    named |= set(re.findall(r'delete_key\(attributes, "([^"]+)"\)', text))
    assert named, "the transform processor names no attributes"
    assert named <= emitted_keys(), named - emitted_keys()


def test_no_unkeyed_hash(config: dict[str, Any]) -> None:
    for processor in config["processors"].values():
        for action in processor.get("actions", []):
            assert action.get("action") != "hash", "the hash action is unsalted SHA-1"
    for statement in _statements(config):
        for call in re.finditer(r"(SHA1|SHA256|SHA512|MD5|FNV|Murmur3\w*|XXH\w*)\((.*)", statement):
            assert call.group(1) == "SHA256"
            assert call.group(2).startswith(f'Concat(["{SALT}", '), statement


def _covered(statements: list[str], key: str) -> bool:
    hashed = f'set(attributes["{key}"], SHA256(Concat(["{SALT}", attributes["{key}"]], "|")))'
    deleted = f'delete_key(attributes, "{key}")'
    without_salt = f'where "{SALT}" == ""'
    is_hashed = any(s.startswith(hashed) for s in statements)
    is_deleted = any(s.startswith(deleted) and without_salt not in s for s in statements)
    deleted_without_salt = any(s.startswith(deleted) and without_salt in s for s in statements)
    # Hashed with the key, and removed when there is no key; or always removed.
    return (is_hashed and deleted_without_salt) or is_deleted


@pytest.mark.parametrize("key", sorted(PERSONAL_KEYS | USER_ACTOR_KEYS | USER_ACTOR_DROPPED))
def test_every_personal_data_attribute_is_hashed_with_a_key_or_removed(
    config: dict[str, Any], key: str
) -> None:
    statements = _statements(config)
    assert _covered(statements, key), f"{key} reaches the backend unprotected"
    if key in USER_ACTOR_KEYS | USER_ACTOR_DROPPED:
        # decision_trace.actor.* hold personal data only when the actor is a user.
        mentions = [s for s in statements if f'"{key}"' in s and s.startswith(("set", "delete"))]
        assert all(f'attributes["{keys.ACTOR_TYPE}"] == "user"' in s for s in mentions)


def test_personal_data_keys_are_all_keys_we_emit() -> None:
    assert emitted_keys() >= PERSONAL_KEYS | USER_ACTOR_KEYS | USER_ACTOR_DROPPED


def test_hashing_happens_before_the_email_mask(config: dict[str, Any]) -> None:
    statements = _statements(config)
    mask = next(i for i, s in enumerate(statements) if s.startswith("replace_all_patterns"))
    hashes = [i for i, s in enumerate(statements) if "SHA256(" in s]
    assert hashes and max(hashes) < mask


def test_email_mask_catches_addresses_in_encoded_decision_values(config: dict[str, Any]) -> None:
    (statement,) = [s for s in _statements(config) if s.startswith("replace_all_patterns")]
    pattern, replacement = re.findall(r'"((?:[^"\\]|\\.)*)"', statement)[1:3]
    context = _encode.decision_attributes(
        DecisionTrace(
            reasoning="Customer jane.doe+shop@mail.example.co.uk asked for a refund",
            context={"contact": "Jane <jane@example.com>", "order": "ord-1"},
        )
    )
    for value in context.values():
        masked = re.sub(pattern, replacement, str(value))
        assert "@" not in masked
    masked_context = re.sub(pattern, replacement, str(context[keys.CONTEXT]))
    assert json.loads(masked_context) == {"contact": "Jane <[email]>", "order": "ord-1"}
    # The mask leaves the keyed digests of user.* alone.
    salt = "00" * 32
    digest = hashlib.sha256(f"{salt}|jane@example.com".encode()).hexdigest()
    assert re.sub(pattern, replacement, digest) == digest
