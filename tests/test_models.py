"""Models: constructors, validation and enums."""

from __future__ import annotations

import pytest

from decision_trace import (
    Actor,
    ActorType,
    DecisionTrace,
    InvalidInputError,
    ObjectType,
    Outcome,
    RiskLevel,
    TrackedObject,
)


def test_actor_constructors_set_type_and_fields() -> None:
    user = Actor.user("user-123", "John Doe", email="john@example.com", role="support")
    agent = Actor.ai_agent("pricing-ai", "Dynamic Pricing", model="gpt-4", version="2.1")
    job = Actor.compute("cron-job", "Inventory Sync", service_name="warehouse-api")
    assert (user.type, user.email, user.role) == (ActorType.USER, "john@example.com", "support")
    assert (agent.type, agent.model, agent.version) == (ActorType.AI_AGENT, "gpt-4", "2.1")
    assert (job.type, job.service_name) == (ActorType.COMPUTE, "warehouse-api")
    assert Actor.system("engine").type is ActorType.SYSTEM
    assert Actor.external("stripe", service_name="api.stripe.com").type is ActorType.EXTERNAL


def test_actor_extra_keywords_become_metadata() -> None:
    actor = Actor.user("u1", team="returns")
    assert actor.metadata == {"team": "returns"}


@pytest.mark.parametrize("bad_id", ["", "   ", None, 42])
def test_actor_id_must_be_non_empty_string(bad_id: object) -> None:
    with pytest.raises(InvalidInputError, match=r"actor\.id"):
        Actor.user(bad_id)  # type: ignore[arg-type]


def test_models_are_frozen() -> None:
    actor = Actor.user("u1")
    with pytest.raises(AttributeError):
        actor.id = "u2"  # type: ignore[misc]


def test_enums_parse_values_and_names_case_insensitively() -> None:
    assert ActorType.parse("AI_AGENT", "f") is ActorType.AI_AGENT
    assert ActorType.parse("ai_agent", "f") is ActorType.AI_AGENT
    assert ObjectType.parse("Order", "f") is ObjectType.ORDER
    assert Outcome.parse("FAILURE", "f") is Outcome.FAILURE
    assert RiskLevel.parse("medium", "f") is RiskLevel.MEDIUM
    with pytest.raises(InvalidInputError, match="risk_level: must be one of"):
        RiskLevel.parse("spicy", "risk_level")


def test_object_types_cover_ecommerce() -> None:
    names = {member.name for member in ObjectType}
    for needed in (
        "ORDER",
        "PRODUCT",
        "CUSTOMER",
        "INVENTORY",
        "PAYMENT",
        "SHIPMENT",
        "RETURN",
        "CAMPAIGN",
        "PROMOTION",
        "CART",
        "REFUND",
        "SUPPLIER",
        "WAREHOUSE",
        "PRICE",
    ):
        assert needed in names


def test_decision_validates_confidence_and_alternatives() -> None:
    with pytest.raises(InvalidInputError, match="confidence"):
        DecisionTrace("why", confidence=1.5)
    with pytest.raises(InvalidInputError, match="confidence"):
        DecisionTrace("why", confidence=float("nan"))
    with pytest.raises(InvalidInputError, match=r"alternatives\[1\]"):
        DecisionTrace("why", alternatives=[{"action": "a"}, "b"])  # type: ignore[list-item]
    decision = DecisionTrace("why", alternatives=[{"action": "a"}], risk_level="HIGH")  # type: ignore[arg-type]
    assert decision.alternatives == ({"action": "a"},)
    assert decision.risk_level is RiskLevel.HIGH


def test_tracked_object_names_its_type_in_errors() -> None:
    with pytest.raises(InvalidInputError, match="order id"):
        TrackedObject(ObjectType.ORDER, "")
    with pytest.raises(InvalidInputError, match="object_type"):
        TrackedObject("spaceship", "x")  # type: ignore[arg-type]
