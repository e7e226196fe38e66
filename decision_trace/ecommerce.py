"""``EcommerceClient``: one method per common ecommerce event, so nobody invents names.

Each method validates its arguments, then returns the fluent
:class:`~decision_trace.builder.TraceBuilder` pre-filled with the event type, a
description, the linked business objects and (where the method knows it) the actor and
the decision. Nothing is recorded until you call ``record()``, so you can still add the
actor, the reasoning, tags or a parent::

    from decision_trace.ecommerce import EcommerceClient

    client = EcommerceClient()
    client.order_created(
        order_id="ord-12345",
        customer_id="cust-67890",
        total=149.99,
        items=[{"sku": "WIDGET-001", "qty": 2, "price": 74.99}],
    ).by_user("cust-67890", "Jane Customer", role="customer").record()

Vocabulary: event types are ``noun.verb_past`` strings, listed in
:class:`EcommerceEventType`. The objects each method links are in its docstring and in
the table in docs/ecommerce.md.

Money: amounts (``total``, ``amount``, ``refund_amount``, prices, ``cost``) may be
``Decimal``, ``float`` or ``int``; a float is taken at its shortest decimal form
(``74.99`` means ``Decimal("74.99")``, never the binary approximation). Negative amounts,
NaN and infinities are rejected. Stored amounts come back from queries as ``float``
whose ``repr`` is exactly the amount: lossless for every amount with up to two decimals
below 10**13 (and any amount a float prints back exactly). An amount a float cannot
represent exactly (``Decimal("0.1234567890123456789")``) is stored and returned as its
string instead, so nothing is ever rounded. :func:`to_decimal` turns either form back
into the exact ``Decimal``.

Currency: each amount is stored next to a ``currency`` field, an ISO 4217 code
(three letters, upper-cased). The default is ``"USD"`` (:data:`DEFAULT_CURRENCY`);
change it for a whole client with ``EcommerceClient(currency="EUR")`` or per call with
``currency=``.

Bad input raises :class:`~decision_trace.errors.InvalidInputError` naming the field:
empty ids, negative quantities or amounts, a refund larger than the order total (when
both are given), an unknown severity.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from enum import Enum
from typing import Any, TypeAlias

from .builder import TraceBuilder
from .client import DecisionTraceClient
from .errors import InvalidInputError
from .models import Actor, ObjectType, RiskLevel, TrackedObject, require_text

__all__ = [
    "DEFAULT_CURRENCY",
    "EcommerceClient",
    "EcommerceEventType",
    "to_decimal",
]

DEFAULT_CURRENCY = "USD"
"""The currency stored with amounts when neither the client nor the call names one."""

Money: TypeAlias = "Decimal | float | int"
"""An amount of money as the methods accept it (a float is read as its shortest decimal)."""


class EcommerceEventType(str, Enum):
    """The event types :class:`EcommerceClient` records, one per method.

    Values are ``noun.verb_past`` strings; pass them to ``client.query(event_types=...)``.
    """

    ORDER_CREATED = "order.created"
    """A customer placed an order (:meth:`EcommerceClient.order_created`)."""
    ORDER_CANCELLED = "order.cancelled"
    """An order was cancelled (:meth:`EcommerceClient.order_cancelled`)."""
    ORDER_REFUNDED = "order.refunded"
    """Money was paid back on an order (:meth:`EcommerceClient.order_refunded`)."""
    PAYMENT_CAPTURED = "payment.captured"
    """A payment was captured (:meth:`EcommerceClient.payment_captured`)."""
    PAYMENT_FAILED = "payment.failed"
    """A payment attempt failed (:meth:`EcommerceClient.payment_failed`)."""
    INVENTORY_ADJUSTED = "inventory.adjusted"
    """A stock level changed (:meth:`EcommerceClient.inventory_adjusted`)."""
    INVENTORY_LOW_STOCK = "inventory.low_stock_detected"
    """Stock fell to or below its threshold (:meth:`EcommerceClient.inventory_low_stock`)."""
    INVENTORY_RESTOCK_ORDERED = "inventory.restock_ordered"
    """Stock was ordered from a supplier (:meth:`EcommerceClient.inventory_restock_ordered`)."""
    SHIPMENT_CREATED = "shipment.created"
    """A shipment was created for an order (:meth:`EcommerceClient.shipment_created`)."""
    SHIPMENT_SHIPPED = "shipment.shipped"
    """A shipment left with the carrier (:meth:`EcommerceClient.shipment_shipped`)."""
    SHIPMENT_DELIVERED = "shipment.delivered"
    """A shipment reached the customer (:meth:`EcommerceClient.shipment_delivered`)."""
    RETURN_REQUESTED = "return.requested"
    """A customer asked to return items (:meth:`EcommerceClient.return_requested`)."""
    RETURN_APPROVED = "return.approved"
    """A return was approved (:meth:`EcommerceClient.return_approved`)."""
    CUSTOMER_CREATED = "customer.created"
    """A customer account was created (:meth:`EcommerceClient.customer_created`)."""
    CUSTOMER_TIER_CHANGED = "customer.tier_changed"
    """A customer's loyalty tier changed (:meth:`EcommerceClient.customer_tier_changed`)."""
    AI_RECOMMENDATION = "ai.recommendation_generated"
    """An AI agent made a recommendation (:meth:`EcommerceClient.ai_recommendation`)."""
    ANOMALY_DETECTED = "ai.anomaly_detected"
    """A metric behaved abnormally (:meth:`EcommerceClient.anomaly_detected`)."""
    AUTOMATION_TRIGGERED = "automation.triggered"
    """An automation rule fired (:meth:`EcommerceClient.automation_triggered`)."""
    PRICE_UPDATED = "price.updated"
    """A product's price was changed (:meth:`EcommerceClient.price_updated`)."""
    DYNAMIC_PRICE_ADJUSTED = "price.dynamic_adjusted"
    """An AI pricing agent changed a price (:meth:`EcommerceClient.dynamic_price_adjusted`)."""

    def __str__(self) -> str:
        return str(self.value)


# --- validation helpers ---------------------------------------------------------------


def to_decimal(value: Decimal | float | int | str) -> Decimal:
    """The exact ``Decimal`` of an amount, as given to a method or as read back.

    A float is read as its shortest decimal form (``repr``), so a stored ``74.99`` gives
    ``Decimal("74.99")``; a string (how amounts a float cannot hold are stored) is parsed.

    Raises:
        InvalidInputError: the value is not a number or a numeric string.
    """
    if isinstance(value, bool):
        raise InvalidInputError("amount", f"must be a number, got {value!r}")
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, str):
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            raise InvalidInputError("amount", f"must be a number, got {value!r}") from None
    raise InvalidInputError("amount", f"must be a number, got {type(value).__name__}")


def _money(value: Any, field: str) -> Decimal:
    """A non-negative, finite amount as an exact Decimal, or an error naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, (Decimal, float, int)):
        raise InvalidInputError(
            field, f"must be a Decimal, float or int amount, got {type(value).__name__}"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInputError(field, f"must be a finite amount, got {value!r}")
    amount = to_decimal(value)
    if not amount.is_finite():
        raise InvalidInputError(field, f"must be a finite amount, got {value!r}")
    if amount < 0:
        raise InvalidInputError(field, f"must not be negative, got {value!r}")
    return amount


def _optional_money(value: Any, field: str) -> Decimal | None:
    return None if value is None else _money(value, field)


def _currency(value: Any, field: str = "currency") -> str:
    """An ISO 4217 alphabetic code, upper-cased."""
    if not isinstance(value, str):
        raise InvalidInputError(field, f"must be a string, got {type(value).__name__}")
    code = value.strip().upper()
    if len(code) != 3 or not code.isascii() or not code.isalpha():
        raise InvalidInputError(field, f"must be a three-letter ISO 4217 code, got {value!r}")
    return code


def _quantity(value: Any, field: str, *, positive: bool = False) -> int:
    """A whole quantity: never negative, and above zero when ``positive``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(field, f"must be an integer, got {value!r}")
    if value < 0:
        raise InvalidInputError(field, f"must not be negative, got {value}")
    if positive and value == 0:
        raise InvalidInputError(field, "must be greater than 0")
    return value


def _text(value: Any, field: str) -> str:
    """A non-blank string (ids, reasons, names)."""
    return require_text(value, field)


def _optional_text(value: Any, field: str) -> str | None:
    return None if value is None else require_text(value, field)


def _mapping(value: Any, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInputError(field, f"must be a mapping, got {type(value).__name__}")
    return dict(value)


def _when(value: Any, field: str) -> date | None:
    if value is not None and not isinstance(value, date):
        raise InvalidInputError(field, f"must be a date or datetime, got {type(value).__name__}")
    return value


def _strings(value: Any, field: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise InvalidInputError(field, "must be a list of strings")
    return [require_text(item, f"{field}[{index}]") for index, item in enumerate(value)]


_QUANTITY_KEYS = ("qty", "quantity")
_PRICE_KEYS = ("price", "unit_price", "amount")


def _items(value: Any, field: str = "items") -> list[dict[str, Any]]:
    """Line items: a list of mappings; ``qty``/``quantity`` above 0, prices not negative."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise InvalidInputError(field, "must be a list of mappings")
    items: list[dict[str, Any]] = []
    for index, item in enumerate(value):
        where = f"{field}[{index}]"
        if not isinstance(item, Mapping):
            raise InvalidInputError(where, f"must be a mapping, got {type(item).__name__}")
        line = dict(item)
        for key in _QUANTITY_KEYS:
            if key in line:
                _quantity(line[key], f"{where}.{key}", positive=True)
        for key in _PRICE_KEYS:
            if key in line and line[key] is not None:
                line[key] = _money(line[key], f"{where}.{key}")
        items.append(line)
    return items


def _refund_within_total(refund: Decimal | None, total: Decimal | None, field: str) -> None:
    if refund is not None and total is not None and refund > total:
        raise InvalidInputError(
            field, f"must not exceed the order total ({_plain(total)}), got {_plain(refund)}"
        )


def _plain(amount: Decimal) -> str:
    """An amount for a sentence: two decimals unless it has more."""
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent >= -2:
        return f"{amount:.2f}"
    return str(amount)


def _price(amount: Decimal, currency: str) -> str:
    return f"{_plain(amount)} {currency}"


def _drop_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _link_all(builder: TraceBuilder, objects: Sequence[TrackedObject] | None) -> TraceBuilder:
    """Link ready-made :class:`TrackedObject` values to the builder."""
    if objects is None:
        return builder
    if isinstance(objects, (str, bytes)) or not isinstance(objects, Sequence):
        raise InvalidInputError("affected_objects", "must be a list of TrackedObject")
    for index, tracked in enumerate(objects):
        if not isinstance(tracked, TrackedObject):
            raise InvalidInputError(
                f"affected_objects[{index}]",
                f"must be a TrackedObject, got {type(tracked).__name__}",
            )
        builder.affecting(
            tracked.object_type,
            tracked.external_id,
            tracked.state,
            state_before=tracked.state_before,
            state_after=tracked.state_after,
        )
    return builder


class EcommerceClient(DecisionTraceClient):
    """A :class:`DecisionTraceClient` with one method per common ecommerce event.

    Every method returns the pre-filled, not yet recorded builder; call ``record()``
    (after ``.by_user(...)``, ``.because(...)`` and the like, if you wish). Methods that
    take a reason fill in the decision; a later ``.because(...)`` replaces that reasoning
    and context (confidence and risk stay unless given again).

    Args:
        db_path: The SQLite file (see :class:`DecisionTraceClient`).
        currency: The ISO 4217 code stored with amounts when a call names none
            (default ``"USD"``).
        **options: Passed to :class:`DecisionTraceClient` (``durability``,
            ``service_name``, ``otlp_endpoint``, ``exporters``, ``max_queue_size``).
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str] | None = None,
        *,
        currency: str = DEFAULT_CURRENCY,
        **options: Any,
    ) -> None:
        self.currency = _currency(currency)
        super().__init__(db_path, **options)

    def __enter__(self) -> EcommerceClient:
        return self

    def _currency_of(self, currency: str | None) -> str:
        return self.currency if currency is None else _currency(currency)

    def _event(self, event_type: EcommerceEventType, description: str) -> TraceBuilder:
        return self.trace(event_type.value, description)

    # -- orders ------------------------------------------------------------------------

    def order_created(
        self,
        order_id: str,
        customer_id: str,
        total: Money,
        items: Sequence[Mapping[str, Any]],
        *,
        currency: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> TraceBuilder:
        """A customer placed an order. Event type ``order.created``.

        Links the order (state: ``status="created"``, ``total``, ``currency``, ``items``
        and any ``details``) and the customer.

        Args:
            order_id: The order number.
            customer_id: Who placed it.
            total: The amount charged (Decimal, float or int; not negative).
            items: Line items, e.g. ``[{"sku": "WIDGET-001", "qty": 2, "price": 74.99}]``;
                a ``qty``/``quantity`` must be a positive integer, a ``price`` not negative.
            currency: ISO 4217 code; default the client's (``"USD"``).
            details: More order facts to keep (``{"channel": "web", "coupon": "SPRING"}``).
        """
        order_id = _text(order_id, "order_id")
        customer_id = _text(customer_id, "customer_id")
        amount = _money(total, "total")
        lines = _items(items)
        code = self._currency_of(currency)
        state = {
            **_mapping(details, "details"),
            "status": "created",
            "total": amount,
            "currency": code,
            "items": lines,
        }
        noun = "item" if len(lines) == 1 else "items"
        return (
            self._event(
                EcommerceEventType.ORDER_CREATED,
                f"Order {order_id} created: {len(lines)} {noun}, {_price(amount, code)}",
            )
            .affecting_order(order_id, state)
            .affecting_customer(customer_id)
            .with_tags("order")
        )

    def order_cancelled(
        self,
        order_id: str,
        reason: str,
        refund_amount: Money | None = None,
        *,
        customer_id: str | None = None,
        order_total: Money | None = None,
        currency: str | None = None,
    ) -> TraceBuilder:
        """An order was cancelled. Event type ``order.cancelled``.

        Links the order (state: ``status="cancelled"``, and ``refund_amount``,
        ``order_total``, ``currency`` when given) and the customer when given. The
        ``reason`` becomes the decision's reasoning.

        Raises:
            InvalidInputError: ``refund_amount`` exceeds ``order_total``.
        """
        order_id = _text(order_id, "order_id")
        reason = _text(reason, "reason")
        customer = _optional_text(customer_id, "customer_id")
        refund = _optional_money(refund_amount, "refund_amount")
        total = _optional_money(order_total, "order_total")
        _refund_within_total(refund, total, "refund_amount")
        code = self._currency_of(currency)
        state: dict[str, Any] = {"status": "cancelled"}
        if refund is not None or total is not None:
            state.update(
                _drop_none({"refund_amount": refund, "order_total": total, "currency": code})
            )
        builder = (
            self._event(EcommerceEventType.ORDER_CANCELLED, f"Order {order_id} cancelled")
            .affecting_order(order_id, state)
            .because(reason)
            .with_tags("order")
        )
        if customer is not None:
            builder.affecting_customer(customer)
        return builder

    def order_refunded(
        self,
        order_id: str,
        refund_amount: Money,
        reason: str,
        payment_id: str | None = None,
        *,
        customer_id: str | None = None,
        order_total: Money | None = None,
        currency: str | None = None,
        previous_status: str | None = None,
    ) -> TraceBuilder:
        """Money was paid back on an order. Event type ``order.refunded``.

        Links the order (state: ``status`` ``"refunded"``, or ``"partially_refunded"``
        when ``order_total`` is given and larger; ``refund_amount``, ``currency``,
        ``order_total`` when given), the payment (``status="refunded"``,
        ``refund_amount``) and the customer when given. ``reason`` becomes the reasoning,
        so "why was order X refunded?" is
        ``client.query(event_types=["order.refunded"], object_ids=["X"])``.

        With ``previous_status`` (the order's status before the refund, e.g. ``"paid"``)
        the order's status is recorded as a change instead, like
        :meth:`shipment_shipped` does: ``state_before={"status": previous_status}`` and
        ``state_after={"status": "refunded"}`` (or ``"partially_refunded"``), and the
        state keeps the other fields; ``decision-trace why order:X`` then prints
        ``status: paid → refunded``.

        Raises:
            InvalidInputError: ``refund_amount`` exceeds ``order_total``.
        """
        order_id = _text(order_id, "order_id")
        refund = _money(refund_amount, "refund_amount")
        reason = _text(reason, "reason")
        payment = _optional_text(payment_id, "payment_id")
        customer = _optional_text(customer_id, "customer_id")
        total = _optional_money(order_total, "order_total")
        _refund_within_total(refund, total, "refund_amount")
        before = _optional_text(previous_status, "previous_status")
        code = self._currency_of(currency)
        status = "partially_refunded" if total is not None and refund < total else "refunded"
        amounts = _drop_none({"refund_amount": refund, "currency": code, "order_total": total})
        builder = self._event(
            EcommerceEventType.ORDER_REFUNDED,
            f"Refund of {_price(refund, code)} for order {order_id}",
        )
        if before is None:
            builder.affecting_order(order_id, {"status": status, **amounts})
        else:
            builder.affecting_order(
                order_id,
                amounts,
                state_before={"status": before},
                state_after={"status": status},
            )
        builder.because(reason).with_tags("order", "refund")
        if payment is not None:
            builder.affecting_payment(
                payment, {"status": "refunded", "refund_amount": refund, "currency": code}
            )
        if customer is not None:
            builder.affecting_customer(customer)
        return builder

    # -- payments ----------------------------------------------------------------------

    def payment_captured(
        self,
        payment_id: str,
        order_id: str,
        amount: Money,
        payment_method: str,
        *,
        processor: str | None = None,
        currency: str | None = None,
    ) -> TraceBuilder:
        """A payment was captured. Event type ``payment.captured``.

        Links the payment (state: ``status="captured"``, ``amount``, ``currency``,
        ``method``, ``processor``) and the order. With ``processor`` (``"stripe"``) the
        actor is that external service; chain ``.by_...()`` to name another.
        """
        payment_id = _text(payment_id, "payment_id")
        order_id = _text(order_id, "order_id")
        value = _money(amount, "amount")
        method = _text(payment_method, "payment_method")
        processor = _optional_text(processor, "processor")
        code = self._currency_of(currency)
        builder = (
            self._event(
                EcommerceEventType.PAYMENT_CAPTURED,
                f"Payment {payment_id} of {_price(value, code)} captured for order {order_id}",
            )
            .affecting_payment(
                payment_id,
                _drop_none(
                    {
                        "status": "captured",
                        "amount": value,
                        "currency": code,
                        "method": method,
                        "processor": processor,
                    }
                ),
            )
            .affecting_order(order_id)
            .with_tags("payment")
        )
        if processor is not None:
            builder.by_external(processor)
        return builder

    def payment_failed(
        self,
        payment_id: str,
        order_id: str,
        amount: Money,
        error_code: str,
        error_message: str | None = None,
        *,
        payment_method: str | None = None,
        processor: str | None = None,
        currency: str | None = None,
    ) -> TraceBuilder:
        """A payment attempt failed. Event type ``payment.failed``, outcome failure.

        Links the payment (state: ``status="failed"``, ``amount``, ``currency``,
        ``error_code``, ``method``, ``processor``) and the order. The event's error is
        ``"<error_code>: <error_message>"``. With ``processor`` the actor is that
        external service.
        """
        payment_id = _text(payment_id, "payment_id")
        order_id = _text(order_id, "order_id")
        value = _money(amount, "amount")
        error_code = _text(error_code, "error_code")
        message = _optional_text(error_message, "error_message")
        method = _optional_text(payment_method, "payment_method")
        processor = _optional_text(processor, "processor")
        code = self._currency_of(currency)
        builder = (
            self._event(
                EcommerceEventType.PAYMENT_FAILED,
                f"Payment {payment_id} of {_price(value, code)} failed for order {order_id}: "
                f"{error_code}",
            )
            .affecting_payment(
                payment_id,
                _drop_none(
                    {
                        "status": "failed",
                        "amount": value,
                        "currency": code,
                        "error_code": error_code,
                        "method": method,
                        "processor": processor,
                    }
                ),
            )
            .affecting_order(order_id)
            .failed(f"{error_code}: {message}" if message else error_code)
            .with_tags("payment")
        )
        if processor is not None:
            builder.by_external(processor)
        return builder

    # -- inventory ---------------------------------------------------------------------

    def inventory_adjusted(
        self,
        sku: str,
        quantity_before: int,
        quantity_after: int,
        reason: str,
        location: str | None = None,
    ) -> TraceBuilder:
        """A stock level changed. Event type ``inventory.adjusted``.

        Links the inventory item with ``state_before={"quantity": quantity_before}`` and
        ``state_after={"quantity": quantity_after}`` (state: ``delta`` and ``location``).
        ``reason`` becomes the reasoning.

        Raises:
            InvalidInputError: a quantity is negative or not an integer.
        """
        sku = _text(sku, "sku")
        before = _quantity(quantity_before, "quantity_before")
        after = _quantity(quantity_after, "quantity_after")
        reason = _text(reason, "reason")
        location = _optional_text(location, "location")
        delta = after - before
        return (
            self._event(
                EcommerceEventType.INVENTORY_ADJUSTED,
                f"Inventory {sku} adjusted: {before} -> {after} ({delta:+d})",
            )
            .affecting_inventory(
                sku, before, after, state=_drop_none({"delta": delta, "location": location})
            )
            .because(reason)
            .with_tags("inventory")
        )

    def inventory_low_stock(
        self,
        sku: str,
        current_quantity: int,
        threshold: int,
        *,
        recommended_action: str | None = None,
        location: str | None = None,
    ) -> TraceBuilder:
        """Stock is at or below its threshold. Event type ``inventory.low_stock_detected``.

        Links the inventory item (state: ``quantity``, ``threshold``, ``location``). The
        decision says why it fired, with ``threshold`` and ``recommended_action`` as
        context; risk is ``"high"`` when out of stock, else ``"medium"`` (override with
        ``.with_risk()``).
        """
        sku = _text(sku, "sku")
        quantity = _quantity(current_quantity, "current_quantity")
        limit = _quantity(threshold, "threshold")
        action = _optional_text(recommended_action, "recommended_action")
        location = _optional_text(location, "location")
        return (
            self._event(
                EcommerceEventType.INVENTORY_LOW_STOCK,
                f"Low stock: {sku} at {quantity} (threshold {limit})",
            )
            .affecting_inventory(
                sku,
                state=_drop_none({"quantity": quantity, "threshold": limit, "location": location}),
            )
            .because(
                f"Stock level {quantity} is at or below the threshold of {limit}",
                context=_drop_none(
                    {
                        "current_quantity": quantity,
                        "threshold": limit,
                        "recommended_action": action,
                    }
                ),
            )
            .with_risk(RiskLevel.HIGH if quantity == 0 else RiskLevel.MEDIUM)
            .with_tags("inventory", "low-stock")
        )

    def inventory_restock_ordered(
        self,
        sku: str,
        quantity_ordered: int,
        supplier: str,
        expected_arrival: date | None = None,
        cost: Money | None = None,
        *,
        purchase_order_id: str | None = None,
        currency: str | None = None,
    ) -> TraceBuilder:
        """Stock was ordered from a supplier. Event type ``inventory.restock_ordered``.

        Links the inventory item (state: ``quantity_ordered``), the supplier, and the
        purchase order when ``purchase_order_id`` is given (state: ``status="ordered"``,
        ``sku``, ``quantity``, ``cost``, ``currency``, ``expected_arrival``).

        Args:
            sku: The stock-keeping unit.
            quantity_ordered: How many units (a positive integer).
            supplier: The supplier's id.
            purchase_order_id: The purchase order number, if there is one.
            expected_arrival: When the stock should arrive (stored as ISO 8601).
            cost: The total cost of the order.
            currency: ISO 4217 code of ``cost``; default the client's.
        """
        sku = _text(sku, "sku")
        quantity = _quantity(quantity_ordered, "quantity_ordered", positive=True)
        supplier = _text(supplier, "supplier")
        order_number = _optional_text(purchase_order_id, "purchase_order_id")
        arrival = _when(expected_arrival, "expected_arrival")
        value = _optional_money(cost, "cost")
        code = self._currency_of(currency)
        money = {"cost": value, "currency": code} if value is not None else {}
        builder = (
            self._event(
                EcommerceEventType.INVENTORY_RESTOCK_ORDERED,
                f"Restock of {quantity} x {sku} ordered from {supplier}",
            )
            .affecting_inventory(
                sku,
                state=_drop_none(
                    {"quantity_ordered": quantity, "expected_arrival": arrival, **money}
                ),
            )
            .affecting(ObjectType.SUPPLIER, supplier)
            .with_tags("inventory", "restock")
        )
        if order_number is not None:
            builder.affecting(
                ObjectType.PURCHASE_ORDER,
                order_number,
                _drop_none(
                    {
                        "status": "ordered",
                        "sku": sku,
                        "quantity": quantity,
                        "expected_arrival": arrival,
                        **money,
                    }
                ),
            )
        return builder

    # -- shipping ----------------------------------------------------------------------

    def shipment_created(
        self,
        shipment_id: str,
        order_id: str,
        carrier: str,
        tracking_number: str | None = None,
        items: Sequence[Mapping[str, Any]] | None = None,
        *,
        warehouse: str | None = None,
    ) -> TraceBuilder:
        """A shipment was created for an order. Event type ``shipment.created``.

        Links the shipment (state: ``status="created"``, ``carrier``,
        ``tracking_number``, ``items``, ``warehouse``) and the order.
        """
        shipment_id = _text(shipment_id, "shipment_id")
        order_id = _text(order_id, "order_id")
        carrier = _text(carrier, "carrier")
        tracking = _optional_text(tracking_number, "tracking_number")
        lines = _items(items) if items is not None else None
        warehouse = _optional_text(warehouse, "warehouse")
        return (
            self._event(
                EcommerceEventType.SHIPMENT_CREATED,
                f"Shipment {shipment_id} created for order {order_id} ({carrier})",
            )
            .affecting_shipment(
                shipment_id,
                _drop_none(
                    {
                        "status": "created",
                        "carrier": carrier,
                        "tracking_number": tracking,
                        "items": lines,
                        "warehouse": warehouse,
                    }
                ),
            )
            .affecting_order(order_id)
            .with_tags("shipment")
        )

    def shipment_shipped(
        self,
        shipment_id: str,
        order_id: str,
        tracking_number: str,
        carrier: str,
        *,
        estimated_delivery: date | None = None,
    ) -> TraceBuilder:
        """A shipment left with the carrier. Event type ``shipment.shipped``.

        Links the shipment (``state_before={"status": "created"}``,
        ``state_after={"status": "shipped"}``; state: ``carrier``, ``tracking_number``,
        ``estimated_delivery``) and the order.
        """
        shipment_id = _text(shipment_id, "shipment_id")
        order_id = _text(order_id, "order_id")
        tracking = _text(tracking_number, "tracking_number")
        carrier = _text(carrier, "carrier")
        eta = _when(estimated_delivery, "estimated_delivery")
        return (
            self._event(
                EcommerceEventType.SHIPMENT_SHIPPED,
                f"Shipment {shipment_id} shipped via {carrier} (tracking {tracking})",
            )
            .affecting_shipment(
                shipment_id,
                _drop_none(
                    {"carrier": carrier, "tracking_number": tracking, "estimated_delivery": eta}
                ),
                state_before={"status": "created"},
                state_after={"status": "shipped"},
            )
            .affecting_order(order_id)
            .with_tags("shipment")
        )

    def shipment_delivered(
        self,
        shipment_id: str,
        order_id: str,
        delivery_time: datetime | None = None,
        signature: str | None = None,
    ) -> TraceBuilder:
        """A shipment reached the customer. Event type ``shipment.delivered``.

        Links the shipment (``state_before={"status": "shipped"}``,
        ``state_after={"status": "delivered"}``; state: ``delivered_at`` and
        ``signed_by`` when given) and the order.
        """
        shipment_id = _text(shipment_id, "shipment_id")
        order_id = _text(order_id, "order_id")
        delivered_at = _when(delivery_time, "delivery_time")
        signed_by = _optional_text(signature, "signature")
        return (
            self._event(
                EcommerceEventType.SHIPMENT_DELIVERED,
                f"Shipment {shipment_id} for order {order_id} delivered",
            )
            .affecting_shipment(
                shipment_id,
                _drop_none({"delivered_at": delivered_at, "signed_by": signed_by}),
                state_before={"status": "shipped"},
                state_after={"status": "delivered"},
            )
            .affecting_order(order_id)
            .with_tags("shipment")
        )

    # -- returns -----------------------------------------------------------------------

    def return_requested(
        self,
        return_id: str,
        order_id: str,
        customer_id: str,
        items: Sequence[Mapping[str, Any]],
        reason: str,
    ) -> TraceBuilder:
        """A customer asked to return items. Event type ``return.requested``.

        Links the return (state: ``status="requested"``, ``items``), the order and the
        customer. ``reason`` (the customer's) becomes the reasoning.
        """
        return_id = _text(return_id, "return_id")
        order_id = _text(order_id, "order_id")
        customer_id = _text(customer_id, "customer_id")
        lines = _items(items)
        reason = _text(reason, "reason")
        return (
            self._event(
                EcommerceEventType.RETURN_REQUESTED,
                f"Return {return_id} requested for order {order_id}",
            )
            .affecting_return(return_id, {"status": "requested", "items": lines})
            .affecting_order(order_id)
            .affecting_customer(customer_id)
            .because(reason)
            .with_tags("return")
        )

    def return_approved(
        self,
        return_id: str,
        order_id: str,
        refund_amount: Money,
        approval_reason: str,
        *,
        customer_id: str | None = None,
        order_total: Money | None = None,
        currency: str | None = None,
    ) -> TraceBuilder:
        """A return was approved. Event type ``return.approved``.

        Links the return (``state_before={"status": "requested"}``,
        ``state_after={"status": "approved"}``; state: ``refund_amount``, ``currency``),
        the order and, when given, the customer. ``approval_reason`` becomes the
        reasoning. Record the money going back with :meth:`order_refunded`.

        Raises:
            InvalidInputError: ``refund_amount`` exceeds ``order_total``.
        """
        return_id = _text(return_id, "return_id")
        order_id = _text(order_id, "order_id")
        refund = _money(refund_amount, "refund_amount")
        reason = _text(approval_reason, "approval_reason")
        customer = _optional_text(customer_id, "customer_id")
        total = _optional_money(order_total, "order_total")
        _refund_within_total(refund, total, "refund_amount")
        code = self._currency_of(currency)
        builder = (
            self._event(
                EcommerceEventType.RETURN_APPROVED,
                f"Return {return_id} approved: refund {_price(refund, code)}",
            )
            .affecting_return(
                return_id,
                {"refund_amount": refund, "currency": code},
                state_before={"status": "requested"},
                state_after={"status": "approved"},
            )
            .affecting_order(order_id)
            .because(reason)
            .with_tags("return")
        )
        if customer is not None:
            builder.affecting_customer(customer)
        return builder

    # -- customers ---------------------------------------------------------------------

    def customer_created(
        self,
        customer_id: str,
        email: str | None = None,
        source: str | None = None,
        *,
        name: str | None = None,
        tier: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> TraceBuilder:
        """A customer account was created. Event type ``customer.created``.

        Links the customer (state: ``status="active"``, ``email``, ``name``, ``source``
        such as ``"web"``, ``tier``, and any ``details``). E-mail and name are personal
        data; the ledger file is created 0600.
        """
        customer_id = _text(customer_id, "customer_id")
        email = _optional_text(email, "email")
        name = _optional_text(name, "name")
        source = _optional_text(source, "source")
        tier = _optional_text(tier, "tier")
        state = {
            **_mapping(details, "details"),
            **_drop_none(
                {
                    "status": "active",
                    "email": email,
                    "name": name,
                    "source": source,
                    "tier": tier,
                }
            ),
        }
        via = f" via {source}" if source else ""
        return (
            self._event(
                EcommerceEventType.CUSTOMER_CREATED, f"Customer {customer_id} registered{via}"
            )
            .affecting_customer(customer_id, state)
            .with_tags("customer")
        )

    def customer_tier_changed(
        self,
        customer_id: str,
        old_tier: str,
        new_tier: str,
        reason: str | None = None,
    ) -> TraceBuilder:
        """A customer's loyalty tier changed. Event type ``customer.tier_changed``.

        Links the customer with ``state_before={"tier": old_tier}`` and
        ``state_after={"tier": new_tier}``. ``reason`` becomes the reasoning.
        """
        customer_id = _text(customer_id, "customer_id")
        old_tier = _text(old_tier, "old_tier")
        new_tier = _text(new_tier, "new_tier")
        reason = _optional_text(reason, "reason")
        builder = (
            self._event(
                EcommerceEventType.CUSTOMER_TIER_CHANGED,
                f"Customer {customer_id} tier changed: {old_tier} -> {new_tier}",
            )
            .affecting_customer(
                customer_id, state_before={"tier": old_tier}, state_after={"tier": new_tier}
            )
            .with_tags("customer")
        )
        if reason is not None:
            builder.because(reason)
        return builder

    # -- AI and automation -------------------------------------------------------------

    def ai_recommendation(
        self,
        recommendation_type: str,
        recommendation: Mapping[str, Any],
        context: Mapping[str, Any],
        confidence: float,
        model: str,
        *,
        agent_id: str | None = None,
        agent_name: str | None = None,
        agent_version: str | None = None,
        recommendation_id: str | None = None,
        reasoning: str | None = None,
        alternatives: Sequence[Mapping[str, Any]] | None = None,
        rejection_reasons: Mapping[str, str] | None = None,
        affected_objects: Sequence[TrackedObject] | None = None,
    ) -> TraceBuilder:
        """An AI agent made a recommendation. Event type ``ai.recommendation_generated``.

        The actor is the AI agent (``agent_id``, default the ``model`` name), with its
        model, so GenAI-aware backends see ``gen_ai.agent.id`` and
        ``gen_ai.request.model``. The decision holds ``reasoning`` (default a sentence
        naming the type and confidence), the ``confidence``, and as context the facts
        given plus ``recommendation_type`` and ``recommendation``. Tagged ``ai``,
        ``recommendation`` and the recommendation type. With ``recommendation_id`` it
        also links a ``recommendation`` object whose state is the recommendation, so a
        later human approval can link the same id. ``affected_objects`` links more
        objects (or chain ``.affecting_...()``).

        Raises:
            InvalidInputError: ``confidence`` is outside 0..1, or ``context`` already has
                a ``recommendation`` or ``recommendation_type`` key.
        """
        kind = _text(recommendation_type, "recommendation_type")
        proposal = _mapping(recommendation, "recommendation")
        facts = _mapping(context, "context")
        model = _text(model, "model")
        for reserved in ("recommendation", "recommendation_type"):
            if reserved in facts:
                raise InvalidInputError(
                    f"context[{reserved!r}]", f"is filled in from the {reserved} argument"
                )
        rec_id = _optional_text(recommendation_id, "recommendation_id")
        agent = Actor.ai_agent(
            _text(agent_id, "agent_id") if agent_id is not None else model,
            agent_name,
            model=model,
            version=agent_version,
        )
        why = (
            _text(reasoning, "reasoning")
            if reasoning is not None
            else f"{model} recommends {kind} (confidence {confidence})"
        )
        builder = (
            self._event(EcommerceEventType.AI_RECOMMENDATION, f"AI recommendation: {kind}")
            .by(agent)
            .because(
                why,
                context={**facts, "recommendation_type": kind, "recommendation": proposal},
                alternatives=alternatives,
                rejection_reasons=rejection_reasons,
                confidence=confidence,
            )
            .with_tags("ai", "recommendation", kind)
        )
        if rec_id is not None:
            builder.affecting(
                ObjectType.RECOMMENDATION, rec_id, {"type": kind, "recommendation": proposal}
            )
        return _link_all(builder, affected_objects)

    def anomaly_detected(
        self,
        anomaly_type: str,
        metric: str,
        observed_value: float | None = None,
        *,
        severity: RiskLevel | str = RiskLevel.MEDIUM,
        threshold: float | None = None,
        expected_value: float | None = None,
        description: str | None = None,
        context: Mapping[str, Any] | None = None,
        detector_id: str = "anomaly-detector",
        detector_name: str | None = None,
        model: str | None = None,
        affected_objects: Sequence[TrackedObject] | None = None,
    ) -> TraceBuilder:
        """A metric behaved abnormally. Event type ``ai.anomaly_detected``.

        The actor is the detector: an AI agent when ``model`` is given, else a system
        actor (``detector_id``). The decision's reasoning is ``description`` (default a
        sentence naming the metric and value), its context holds ``anomaly_type``,
        ``metric``, ``observed_value``, ``threshold``, ``expected_value``, ``severity``
        and the ``context`` given, and its risk is the severity (``"low"``,
        ``"medium"``, ``"high"`` or ``"critical"``; ``.with_risk()`` overrides the
        risk). Link what the anomaly concerns with ``affected_objects`` or
        ``.affecting_...()``.
        """
        kind = _text(anomaly_type, "anomaly_type")
        metric = _text(metric, "metric")
        level = RiskLevel.parse(severity, "severity")
        for field, number in (
            ("observed_value", observed_value),
            ("threshold", threshold),
            ("expected_value", expected_value),
        ):
            if number is not None and (
                isinstance(number, bool) or not isinstance(number, (int, float, Decimal))
            ):
                raise InvalidInputError(field, f"must be a number, got {number!r}")
        facts = _mapping(context, "context")
        model = _optional_text(model, "model")
        detector = _text(detector_id, "detector_id")
        actor = (
            Actor.ai_agent(detector, detector_name, model=model)
            if model is not None
            else Actor.system(detector, detector_name)
        )
        tripped = metric if observed_value is None else f"{metric} = {observed_value}"
        if threshold is not None:
            tripped += f" (threshold {threshold})"
        elif expected_value is not None:
            tripped += f" (expected {expected_value})"
        why = (
            _text(description, "description")
            if description is not None
            else f"Anomaly {kind}: {tripped}"
        )
        builder = (
            self._event(
                EcommerceEventType.ANOMALY_DETECTED,
                f"{level.value.capitalize()} anomaly {kind}: {tripped}",
            )
            .by(actor)
            .because(
                why,
                context={
                    **facts,
                    **_drop_none(
                        {
                            "anomaly_type": kind,
                            "metric": metric,
                            "observed_value": observed_value,
                            "threshold": threshold,
                            "expected_value": expected_value,
                            "severity": level.value,
                        }
                    ),
                },
                risk_level=level,
            )
            .with_tags("anomaly", kind)
        )
        return _link_all(builder, affected_objects)

    def automation_triggered(
        self,
        rule: str,
        trigger: str,
        actions: Sequence[str] = (),
        context: Mapping[str, Any] | None = None,
        *,
        engine: str | None = None,
    ) -> TraceBuilder:
        """An automation rule fired. Event type ``automation.triggered``.

        The actor is a system actor named after the ``rule`` (with ``engine`` as its
        service name). The decision's reasoning names the rule and the ``trigger``
        (what made it fire, e.g. an event type or an event id), and its context holds
        ``rule``, ``trigger``, ``actions`` (what the rule does next) and the
        ``context`` given. Chain ``.child_of(event_id)`` to hang it under the
        triggering event.
        """
        rule = _text(rule, "rule")
        trigger = _text(trigger, "trigger")
        steps = _strings(actions, "actions")
        facts = _mapping(context, "context")
        engine = _optional_text(engine, "engine")
        return (
            self._event(
                EcommerceEventType.AUTOMATION_TRIGGERED,
                f"Automation {rule} triggered by {trigger}",
            )
            .by(Actor.system(rule, service_name=engine))
            .because(
                f"Rule {rule} fired on {trigger}",
                context={**facts, "rule": rule, "trigger": trigger, "actions": steps},
            )
            .with_tags("automation")
        )

    # -- pricing -----------------------------------------------------------------------

    def price_updated(
        self,
        product_id: str,
        old_price: Money,
        new_price: Money,
        reason: str | None = None,
        *,
        currency: str | None = None,
        effective_date: date | None = None,
    ) -> TraceBuilder:
        """A product's price was changed. Event type ``price.updated``.

        Links the product with ``state_before={"price": old_price}`` and
        ``state_after={"price": new_price}`` (state: ``currency``, ``change``,
        ``effective_date``). ``reason`` becomes the reasoning.
        """
        reason = _optional_text(reason, "reason")
        builder, _ = self._price_change(
            EcommerceEventType.PRICE_UPDATED,
            product_id,
            old_price,
            new_price,
            currency=currency,
            effective_date=effective_date,
            tags=("pricing",),
        )
        if reason is not None:
            builder.because(reason)
        return builder

    def dynamic_price_adjusted(
        self,
        product_id: str,
        old_price: Money,
        new_price: Money,
        factors: Mapping[str, Any],
        model: str,
        confidence: float,
        *,
        agent_id: str | None = None,
        agent_name: str | None = None,
        agent_version: str | None = None,
        reasoning: str | None = None,
        alternatives: Sequence[Mapping[str, Any]] | None = None,
        rejection_reasons: Mapping[str, str] | None = None,
        currency: str | None = None,
    ) -> TraceBuilder:
        """An AI pricing agent changed a price. Event type ``price.dynamic_adjusted``.

        Links the product with the price before and after, as :meth:`price_updated`.
        The actor is the AI agent (``agent_id``, default the ``model`` name) with its
        model; the decision holds ``reasoning`` (default a sentence naming the change),
        ``factors`` as context, the ``alternatives`` it considered with
        ``rejection_reasons``, and ``confidence``.
        """
        facts = _mapping(factors, "factors")
        model = _text(model, "model")
        agent = Actor.ai_agent(
            _text(agent_id, "agent_id") if agent_id is not None else model,
            agent_name,
            model=model,
            version=agent_version,
        )
        builder, change = self._price_change(
            EcommerceEventType.DYNAMIC_PRICE_ADJUSTED,
            product_id,
            old_price,
            new_price,
            currency=currency,
            effective_date=None,
            tags=("pricing", "ai"),
        )
        why = (
            _text(reasoning, "reasoning")
            if reasoning is not None
            else f"{model} changed the price of {change}"
        )
        return builder.by(agent).because(
            why,
            context=facts,
            alternatives=alternatives,
            rejection_reasons=rejection_reasons,
            confidence=confidence,
        )

    def _price_change(
        self,
        event_type: EcommerceEventType,
        product_id: Any,
        old_price: Any,
        new_price: Any,
        *,
        currency: str | None,
        effective_date: Any,
        tags: tuple[str, ...],
    ) -> tuple[TraceBuilder, str]:
        """The builder of a price change, and ``"<product> from <old> to <new>"``."""
        product_id = _text(product_id, "product_id")
        old = _money(old_price, "old_price")
        new = _money(new_price, "new_price")
        when = _when(effective_date, "effective_date")
        code = self._currency_of(currency)
        builder = (
            self._event(
                event_type,
                f"Price of {product_id} changed: {_plain(old)} -> {_price(new, code)}",
            )
            .affecting_product(
                product_id,
                _drop_none({"currency": code, "change": new - old, "effective_date": when}),
                state_before={"price": old},
                state_after={"price": new},
            )
            .with_tags(*tags)
        )
        return builder, f"{product_id} from {_price(old, code)} to {_price(new, code)}"
