"""Writes for organisations, memberships, API keys and limits.

Every change that the gateway must see is published to the access snapshot after the transaction
commits (``tenants.snapshot``). Rules that depend on who acts take the actor's role as an argument;
the API resolves that role once, in ``tenants.api.scoping``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from tenants import keys, snapshot
from tenants.catalog import model_names_for_organization
from tenants.models import ApiKey, Limits, Membership, Organization, Role, Scope
from tenants.plans import Plan
from tenants.roles import MANAGE, OWN, role_at_least, scopes_allowed_for

MAX_ROTATION_GRACE = timedelta(days=7)


# --- organisations -----------------------------------------------------------------------------


@transaction.atomic
def organization_create(
    *, name: str, slug: str, owner: User | None = None, **limits: Any
) -> Organization:
    """Create an organisation; ``owner`` (if given) becomes its first owner."""
    org = Organization(name=name, slug=slug)
    _apply_limits(org, limits)
    org.full_clean()
    org.save()
    if owner is not None:
        Membership.objects.create(organization=org, user=owner, role=Role.OWNER)
    snapshot.publish_organization_on_commit(org.id)
    return org


@transaction.atomic
def organization_update(*, organization: Organization, name: str) -> Organization:
    organization.name = name
    organization.full_clean()
    organization.save(update_fields=["name", "updated_at"])
    snapshot.publish_organization_on_commit(organization.id)
    return organization


@transaction.atomic
def organization_set_status(*, organization: Organization, status: str) -> Organization:
    """Suspend or reactivate. A suspended organisation's keys stop working everywhere."""
    if status not in Organization.Status.values:
        raise ValidationError({"status": f"Must be one of {Organization.Status.values}."})
    organization.status = status
    organization.save(update_fields=["status", "updated_at"])
    snapshot.publish_organization_on_commit(organization.id)
    return organization


@transaction.atomic
def organization_set_plan(*, organization: Organization, plan: str) -> Organization:
    """Change the plan (platform staff): its scheduling priority reaches the gateway with the
    organisation's snapshot record."""
    if plan not in Plan.values:
        raise ValidationError({"plan": f"Must be one of {Plan.values}."})
    organization.plan = plan
    organization.save(update_fields=["plan", "updated_at"])
    snapshot.publish_organization_on_commit(organization.id)
    return organization


@transaction.atomic
def organization_set_limits(*, organization: Organization, **limits: Any) -> Organization:
    """Set the organisation's limits (``None`` removes one). Platform staff only, by the API."""
    _apply_limits(organization, limits)
    organization.full_clean()
    organization.save()
    snapshot.publish_organization_on_commit(organization.id)
    return organization


def _apply_limits(row: Limits, limits: dict[str, Any]) -> None:
    unknown = set(limits) - set(Limits.LIMIT_FIELDS)
    if unknown:
        raise ValidationError({name: "Not a limit." for name in sorted(unknown)})
    for name, value in limits.items():
        setattr(row, name, value)


# --- memberships -------------------------------------------------------------------------------


def _check_role_change(*, actor_role: str, old_role: str | None, new_role: str | None) -> None:
    """Admins manage members; only owners grant or take the owner role."""
    if not role_at_least(actor_role, MANAGE):
        raise PermissionDenied("Only owners and admins manage members.")
    if Role.OWNER in (old_role, new_role) and not role_at_least(actor_role, OWN):
        raise PermissionDenied("Only owners grant or take the owner role.")


def _ensure_an_owner_remains(membership: Membership) -> None:
    others = Membership.objects.filter(
        organization_id=membership.organization_id, role=Role.OWNER
    ).exclude(pk=membership.pk)
    if membership.role == Role.OWNER and not others.exists():
        raise ValidationError({"role": "An organisation keeps at least one owner."})


@transaction.atomic
def membership_add(
    *, organization: Organization, user: User, role: str, actor_role: str
) -> Membership:
    _check_role_change(actor_role=actor_role, old_role=None, new_role=role)
    if Membership.objects.filter(organization=organization, user=user).exists():
        raise ValidationError({"user": "Already a member of this organisation."})
    membership = Membership(organization=organization, user=user, role=role)
    membership.full_clean()
    membership.save()
    return membership


@transaction.atomic
def membership_change_role(*, membership: Membership, role: str, actor_role: str) -> Membership:
    _check_role_change(actor_role=actor_role, old_role=membership.role, new_role=role)
    if role != Role.OWNER:
        _ensure_an_owner_remains(membership)
    membership.role = role
    membership.full_clean()
    membership.save(update_fields=["role"])
    return membership


@transaction.atomic
def membership_remove(*, membership: Membership, actor_role: str) -> None:
    _check_role_change(actor_role=actor_role, old_role=membership.role, new_role=None)
    _ensure_an_owner_remains(membership)
    membership.delete()


# --- API keys ----------------------------------------------------------------------------------


def _validate_key_settings(
    *,
    organization: Organization,
    scopes: list[str],
    allowed_models: list[str],
    expires_at: datetime | None,
    limits: dict[str, Any],
    check_expiry: bool = True,
) -> None:
    errors: dict[str, list[str]] = {}
    if not scopes:
        errors["scopes"] = ["A key needs at least one scope."]
    unknown_scopes = sorted(set(scopes) - set(Scope.values))
    if unknown_scopes:
        errors.setdefault("scopes", []).append(f"Unknown scopes: {', '.join(unknown_scopes)}.")
    if allowed_models:
        usable = set(model_names_for_organization(organization))
        missing = sorted(set(allowed_models) - usable)
        if missing:
            errors["allowed_models"] = [
                f"Not available to this organisation: {', '.join(missing)}."
            ]
    if check_expiry and expires_at is not None and expires_at <= timezone.now():
        errors["expires_at"] = ["Must be in the future."]
    for name in Limits.LIMIT_FIELDS:
        mine, theirs = limits.get(name), getattr(organization, name)
        if mine is not None and theirs is not None and Decimal(mine) > Decimal(theirs):
            errors[name] = [f"May only tighten the organisation's limit ({theirs})."]
    if errors:
        raise ValidationError(errors)


def _check_key_scopes_for_actor(scopes: list[str], actor_role: str) -> None:
    too_strong = sorted(set(scopes) - scopes_allowed_for(actor_role))
    if too_strong:
        raise PermissionDenied(f"Your role may not create keys with: {', '.join(too_strong)}.")


def _check_may_manage_key(api_key: ApiKey, *, actor_role: str, actor: Any) -> None:
    """Admins manage every key of the organisation; members only keys they created."""
    if role_at_least(actor_role, MANAGE):
        return
    if actor is not None and api_key.created_by_id == getattr(actor, "pk", None):
        return
    raise PermissionDenied("Members manage only the keys they created.")


@transaction.atomic
def api_key_create(
    *,
    organization: Organization,
    name: str,
    created_by: User | None,
    actor_role: str,
    scopes: list[str] | None = None,
    allowed_models: list[str] | None = None,
    expires_at: datetime | None = None,
    **limits: Any,
) -> tuple[ApiKey, str]:
    """Create a key and return it with its secret, which is never available again."""
    scopes = sorted(set(scopes if scopes is not None else [Scope.INFERENCE.value]))
    allowed_models = sorted(set(allowed_models or []))
    _check_key_scopes_for_actor(scopes, actor_role)
    _validate_key_settings(
        organization=organization,
        scopes=scopes,
        allowed_models=allowed_models,
        expires_at=expires_at,
        limits=limits,
    )
    secret = keys.generate()
    api_key = ApiKey(
        organization=organization,
        name=name,
        created_by=created_by,
        prefix=secret.lookup,
        last_four=secret.last_four,
        secret_hash=secret.secret_hash,
        scopes=scopes,
        allowed_models=allowed_models,
        expires_at=expires_at,
    )
    _apply_limits(api_key, limits)
    api_key.full_clean()
    api_key.save()
    snapshot.publish_key_on_commit(api_key.id)
    return api_key, secret.plaintext


_UNSET: Any = object()


@transaction.atomic
def api_key_update(
    *,
    api_key: ApiKey,
    actor_role: str,
    actor: Any,
    name: str = _UNSET,
    allowed_models: list[str] = _UNSET,
    expires_at: datetime | None = _UNSET,
    **limits: Any,
) -> ApiKey:
    """Change a key's name, allowed models, expiry or limits (its scopes are fixed at creation).

    ``api_key`` may have been loaded before a concurrent revocation or rotation: the row is
    re-read under a lock and only the changed columns are written, so a revoked key is never
    un-revoked. A key that was rotated out is refused too: changing its expiry would stretch
    its grace period.
    """
    locked = (
        ApiKey.objects.select_for_update(of=("self",))
        .select_related("organization")
        .get(pk=api_key.pk)
    )
    _check_may_manage_key(locked, actor_role=actor_role, actor=actor)
    if locked.revoked_at is not None:
        raise ValidationError({"detail": "A revoked key cannot be changed."})
    if locked.replaced_by_id is not None:
        raise ValidationError({"detail": "A key that was rotated out cannot be changed."})
    changed: list[str] = []
    if name is not _UNSET:
        locked.name = name
        changed.append("name")
    if allowed_models is not _UNSET:
        locked.allowed_models = sorted(set(allowed_models))
        changed.append("allowed_models")
    if expires_at is not _UNSET:
        locked.expires_at = expires_at
        changed.append("expires_at")
    merged = {field: getattr(locked, field) for field in Limits.LIMIT_FIELDS} | limits
    _validate_key_settings(
        organization=locked.organization,
        scopes=locked.scopes,
        allowed_models=locked.allowed_models,
        expires_at=locked.expires_at,
        limits=merged,
        check_expiry=expires_at is not _UNSET,
    )
    _apply_limits(locked, limits)
    changed.extend(limits)
    locked.full_clean()
    if changed:
        locked.save(update_fields=changed)
    snapshot.publish_key_on_commit(locked.id)
    return locked


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey, actor_role: str, actor: Any) -> ApiKey:
    """Revoke at once. Revoking a revoked key is a no-op, so retries are safe."""
    _check_may_manage_key(api_key, actor_role=actor_role, actor=actor)
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
        snapshot.publish_key_on_commit(api_key.id)
    return api_key


@transaction.atomic
def api_key_rotate(
    *,
    api_key: ApiKey,
    actor_role: str,
    actor: Any,
    grace: timedelta = timedelta(0),
) -> tuple[ApiKey, str]:
    """Issue a new secret with the same settings and retire the old key.

    With no grace the old key is revoked now; with a grace period it expires then, so clients can
    switch over without an outage. Returns the new key and its secret (shown once).
    """
    _check_may_manage_key(api_key, actor_role=actor_role, actor=actor)
    # Lock the row so two concurrent rotations cannot both succeed.
    locked = ApiKey.objects.select_for_update().get(pk=api_key.pk)
    if locked.status != ApiKey.Status.ACTIVE or locked.replaced_by_id is not None:
        raise ValidationError({"detail": "Only an active key that was not rotated can be rotated."})
    if not timedelta(0) <= grace <= MAX_ROTATION_GRACE:
        raise ValidationError({"grace_seconds": f"Must be between 0 and {MAX_ROTATION_GRACE}."})
    new_key, plaintext = api_key_create(
        organization=locked.organization,
        name=locked.name,
        created_by=locked.created_by,
        actor_role=Role.OWNER,  # the new key only copies what the old one already had
        scopes=locked.scopes,
        allowed_models=locked.allowed_models,
        expires_at=locked.expires_at,
        **{field: getattr(locked, field) for field in Limits.LIMIT_FIELDS},
    )
    now = timezone.now()
    if grace:
        ends = now + grace
        locked.expires_at = ends if locked.expires_at is None else min(locked.expires_at, ends)
    else:
        locked.revoked_at = now
    locked.replaced_by = new_key
    locked.save(update_fields=["expires_at", "revoked_at", "replaced_by"])
    snapshot.publish_key_on_commit(locked.id)
    return new_key, plaintext


def api_key_touch(api_key: ApiKey, *, resolution_seconds: int) -> None:
    """Record that the key was used, at most once per ``resolution_seconds`` (coarse on purpose:
    a write per request would turn every read into a write)."""
    now = timezone.now()
    if api_key.last_used_at is not None and now - api_key.last_used_at < timedelta(
        seconds=resolution_seconds
    ):
        return
    ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
    api_key.last_used_at = now
