"""The audit log's one writer: ``audit_record``, called by every mutating service.

The services write the record themselves, inside the transaction of the change, so the API, the
console and the admin are audited alike and a change never commits without its record (or the
other way round). Views only tell the services who acts (``actor``, and ``via_key`` when an API
key authenticated the request).

``before`` and ``after`` hold what a person may see of the target (``fields_of``): names, roles,
scopes, limits, statuses, dates. Secrets never go in: ``audit_record`` refuses a state with a
field named like one (``FORBIDDEN_FIELDS``), so a careless caller fails loudly in tests instead
of leaking a hash into a log that admins export.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from django.db import models, transaction

from tenants.models import ApiKey, AuditEvent, Organization

# Every action the log records (stable dotted names: clients filter on them).
ACTIONS: tuple[str, ...] = (
    "organization.created",
    "organization.updated",
    "organization.plan_changed",
    "organization.status_changed",
    "member.added",
    "member.invited",
    "member.invitation_resent",
    "member.invitation_revoked",
    "member.joined",
    "member.role_changed",
    "member.removed",
    "api_key.created",
    "api_key.updated",
    "api_key.rotated",
    "api_key.revoked",
    "api_key.renewed",
    "invoice.finalised",
    "invoice.paid",
    "invoice.voided",
    "invoice.credit_created",
    "invoice.charge_created",
    # Stripe, top-ups and dunning (docs/billing.md, "Stripe" and "Dunning")
    "invoice.pushed",
    "invoice.past_due",
    "organization.payment_suspended",
    "organization.payment_reactivated",
    "stripe.customer_created",
    "topup.started",
    "topup.completed",
    "topup.expired",
    # Prepaid billing (docs/billing.md, "Prepaid")
    "organization.billing_mode_changed",
    "credit.adjusted",
    # The model catalog, changed by platform staff (no organisation: docs/operator-console.md)
    "catalog_model.created",
    "catalog_model.updated",
    "catalog_model.deleted",
    "catalog_model.scaled",
    "catalog_model.schedule_applied",
    "catalog_model.schedule_set",
    "model_alias.created",
    "model_alias.updated",
    "model_alias.deleted",
    # Deployments to Ray Serve (docs/operator-console.md, "Deploy, revisions and rollback")
    "deployment.applied",
    "deployment.rolled_back",
    # Usage dead letters (billing.dead_letters): an operator's replay (platform-level)
    "dead_letter.replayed",
)

# Field names that hold secrets, or data derived from them; never in ``before``/``after``.
FORBIDDEN_FIELDS = frozenset(
    {"secret_hash", "key", "secret", "token", "token_hash", "password", "api_key", "upstream_key"}
)


def _plain(value: Any) -> Any:
    """A JSON-safe form of a field's value (dates as ISO 8601, decimals as exact strings)."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return f"{value:f}"
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, models.Model):
        return str(value.pk)
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def fields_of(row: models.Model, names: Iterable[str]) -> dict[str, Any]:
    """The named fields of ``row`` as a JSON-safe dict (a foreign key by its id)."""
    state: dict[str, Any] = {}
    for name in names:
        field = row._meta.get_field(name)
        attname = getattr(field, "attname", name)
        state[name] = _plain(getattr(row, attname))
    return state


def _check_no_secrets(state: Mapping[str, Any] | None) -> None:
    leaked = sorted(FORBIDDEN_FIELDS & set(state or {}))
    if leaked:
        raise ValueError(f"An audit record may not hold secrets: {', '.join(leaked)}.")


def audit_record(
    *,
    organization: Organization | None,
    actor: Any,
    action: str,
    target: models.Model,
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
    via_key: ApiKey | None = None,
) -> AuditEvent:
    """Record one change. Must run inside the service's transaction (``transaction.atomic``).

    ``actor`` is the person behind the change (a ``User``), or ``None`` for the system. ``target``
    is the changed row: its model name and primary key are kept, not a foreign key, so the record
    outlives it. ``organization`` is ``None`` only for platform-level actions.
    """
    if action not in ACTIONS:
        raise ValueError(f"Unknown audit action {action!r}; add it to tenants.audit.ACTIONS.")
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("audit_record must run inside the transaction of the change.")
    _check_no_secrets(before)
    _check_no_secrets(after)
    user = actor if getattr(actor, "pk", None) is not None else None
    return AuditEvent.objects.create(
        organization=organization,
        actor=user,
        actor_username=user.get_username() if user is not None else "",
        api_key=via_key,
        action=action,
        target_type=target._meta.model_name or type(target).__name__.lower(),
        target_id=str(target.pk),
        before=_plain(dict(before)) if before is not None else None,
        after=_plain(dict(after)) if after is not None else None,
    )
