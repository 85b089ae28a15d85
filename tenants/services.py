"""Writes for organisations, memberships, API keys and limits.

Every change that the gateway must see is published to the access snapshot after the transaction
commits (``tenants.snapshot``). Rules that depend on who acts take the actor's role as an argument;
the API resolves that role once, in ``tenants.api.scoping``.

Every write records itself in the audit log (``tenants.audit.audit_record``) in its own
transaction. Services take the person acting as ``actor`` (``None``: the system) and, when an API
key authenticated the request, that key as ``via_key``; both only label the record, they grant
nothing (permissions come from ``actor_role``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.utils import timezone

from tenants import invitations, keys, snapshot
from tenants.audit import audit_record, fields_of
from tenants.catalog import model_names_for_organization
from tenants.models import ApiKey, Invitation, Limits, Membership, Organization, Role, Scope
from tenants.plans import Plan
from tenants.roles import MANAGE, OWN, role_at_least, scopes_allowed_for

MAX_ROTATION_GRACE = timedelta(days=7)

ORGANIZATION_FIELDS = (
    "name",
    "slug",
    "status",
    "plan",
    "response_cache_enabled",
    *Limits.LIMIT_FIELDS,
)
MEMBERSHIP_FIELDS = ("user", "role")
# What the audit log keeps of a key: never ``secret_hash``.
API_KEY_FIELDS = (
    "name",
    "prefix",
    "last_four",
    "scopes",
    "allowed_models",
    "expires_at",
    "revoked_at",
    "replaced_by",
    "created_by",
    "source",
    *Limits.LIMIT_FIELDS,
)


# --- organisations -----------------------------------------------------------------------------


# Slugs that name a console page rather than an organisation (``/orgs/new/``).
RESERVED_SLUGS = frozenset({"new"})


@transaction.atomic
def organization_create(
    *,
    name: str,
    slug: str,
    owner: User | None = None,
    actor: User | None = None,
    **limits: Any,
) -> Organization:
    """Create an organisation; ``owner`` (if given) becomes its first owner. ``actor`` defaults
    to the owner (the person creating it through the API)."""
    if slug in RESERVED_SLUGS:
        raise ValidationError({"slug": f"The slug `{slug}` is reserved; choose another."})
    org = Organization(name=name, slug=slug)
    _apply_limits(org, limits)
    org.full_clean()
    org.save()
    if owner is not None:
        Membership.objects.create(organization=org, user=owner, role=Role.OWNER)
    audit_record(
        organization=org,
        actor=actor if actor is not None else owner,
        action="organization.created",
        target=org,
        after=fields_of(org, ORGANIZATION_FIELDS),
    )
    snapshot.publish_organization_on_commit(org.id)
    return org


def _audit_organization(
    organization: Organization,
    before: dict[str, Any],
    *,
    action: str,
    actor: User | None,
    via_key: ApiKey | None,
) -> None:
    """Record the fields that changed (all of ``ORGANIZATION_FIELDS`` that differ); nothing
    when nothing changed, so a no-op write leaves no noise in the log."""
    after = fields_of(organization, ORGANIZATION_FIELDS)
    changed = [name for name in ORGANIZATION_FIELDS if before[name] != after[name]]
    if not changed:
        return
    audit_record(
        organization=organization,
        actor=actor,
        via_key=via_key,
        action=action,
        target=organization,
        before={name: before[name] for name in changed},
        after={name: after[name] for name in changed},
    )


@transaction.atomic
def organization_update(
    *,
    organization: Organization,
    name: str,
    response_cache_enabled: bool | None = None,
    actor: User | None = None,
    via_key: ApiKey | None = None,
) -> Organization:
    """Rename, and opt in to or out of the response cache (``None``: unchanged;
    docs/response-cache.md). The gateway learns the opt-in from the access snapshot."""
    before = fields_of(organization, ORGANIZATION_FIELDS)
    organization.name = name
    if response_cache_enabled is not None:
        organization.response_cache_enabled = response_cache_enabled
    organization.full_clean()
    organization.save(update_fields=["name", "response_cache_enabled", "updated_at"])
    _audit_organization(
        organization, before, action="organization.updated", actor=actor, via_key=via_key
    )
    snapshot.publish_organization_on_commit(organization.id)
    return organization


@transaction.atomic
def organization_set_status(
    *,
    organization: Organization,
    status: str,
    actor: User | None = None,
    via_key: ApiKey | None = None,
) -> Organization:
    """Suspend or reactivate. A suspended organisation's keys stop working everywhere."""
    if status not in Organization.Status.values:
        raise ValidationError({"status": f"Must be one of {Organization.Status.values}."})
    before = fields_of(organization, ORGANIZATION_FIELDS)
    organization.status = status
    organization.save(update_fields=["status", "updated_at"])
    _audit_organization(
        organization, before, action="organization.status_changed", actor=actor, via_key=via_key
    )
    snapshot.publish_organization_on_commit(organization.id)
    return organization


@transaction.atomic
def organization_set_plan(
    *,
    organization: Organization,
    plan: str,
    actor: User | None = None,
    via_key: ApiKey | None = None,
) -> Organization:
    """Change the plan (platform staff): its scheduling priority reaches the gateway with the
    organisation's snapshot record."""
    if plan not in Plan.values:
        raise ValidationError({"plan": f"Must be one of {Plan.values}."})
    before = fields_of(organization, ORGANIZATION_FIELDS)
    organization.plan = plan
    organization.save(update_fields=["plan", "updated_at"])
    _audit_organization(
        organization, before, action="organization.plan_changed", actor=actor, via_key=via_key
    )
    snapshot.publish_organization_on_commit(organization.id)
    return organization


@transaction.atomic
def organization_set_limits(
    *,
    organization: Organization,
    actor: User | None = None,
    via_key: ApiKey | None = None,
    **limits: Any,
) -> Organization:
    """Set the organisation's limits (``None`` removes one). Platform staff only, by the API."""
    before = fields_of(organization, ORGANIZATION_FIELDS)
    _apply_limits(organization, limits)
    organization.full_clean()
    organization.save()
    _audit_organization(
        organization, before, action="organization.updated", actor=actor, via_key=via_key
    )
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


def ensure_an_owner_remains(membership: Membership) -> None:
    """Refuse a change that would leave the membership's organisation without an owner (the
    one rule for the API, the console and the admin's forms)."""
    others = Membership.objects.filter(
        organization_id=membership.organization_id, role=Role.OWNER
    ).exclude(pk=membership.pk)
    if membership.role == Role.OWNER and not others.exists():
        raise ValidationError({"role": "An organisation keeps at least one owner."})


@transaction.atomic
def membership_add(
    *,
    organization: Organization,
    user: User,
    role: str,
    actor_role: str,
    actor: User | None = None,
    via_key: ApiKey | None = None,
) -> Membership:
    """Add an existing user directly (platform staff, the admin; tenants invite instead, see
    ``tenants.invitations``, because adding by address would tell them who has an account)."""
    _check_role_change(actor_role=actor_role, old_role=None, new_role=role)
    if Membership.objects.filter(organization=organization, user=user).exists():
        raise ValidationError({"user": "Already a member of this organisation."})
    membership = Membership(organization=organization, user=user, role=role)
    membership.full_clean()
    membership.save()
    audit_record(
        organization=organization,
        actor=actor,
        via_key=via_key,
        action="member.added",
        target=membership,
        after=fields_of(membership, MEMBERSHIP_FIELDS),
    )
    return membership


@transaction.atomic
def membership_change_role(
    *,
    membership: Membership,
    role: str,
    actor_role: str,
    actor: User | None = None,
    via_key: ApiKey | None = None,
) -> Membership:
    _check_role_change(actor_role=actor_role, old_role=membership.role, new_role=role)
    if role != Role.OWNER:
        ensure_an_owner_remains(membership)
    before = fields_of(membership, MEMBERSHIP_FIELDS)
    membership.role = role
    membership.full_clean()
    membership.save(update_fields=["role"])
    if before["role"] != membership.role:
        audit_record(
            organization=membership.organization,
            actor=actor,
            via_key=via_key,
            action="member.role_changed",
            target=membership,
            before=before,
            after=fields_of(membership, MEMBERSHIP_FIELDS),
        )
    return membership


@transaction.atomic
def membership_remove(
    *,
    membership: Membership,
    actor_role: str,
    actor: User | None = None,
    via_key: ApiKey | None = None,
) -> None:
    _check_role_change(actor_role=actor_role, old_role=membership.role, new_role=None)
    ensure_an_owner_remains(membership)
    before = fields_of(membership, MEMBERSHIP_FIELDS)
    audit_record(
        organization=membership.organization,
        actor=actor,
        via_key=via_key,
        action="member.removed",
        target=membership,
        before=before,
    )
    membership.delete()


# --- invitations -------------------------------------------------------------------------------

# What the audit log keeps of an invitation: never ``token_hash``.
INVITATION_FIELDS = ("email", "role", "expires_at", "accepted_at", "accepted_by", "revoked_at")


def _issue_link(invitation: Invitation, *, base_url: str | None) -> str:
    """Give the invitation a new token and expiry and e-mail the link; returns the token.

    The e-mail is sent inside the transaction: if sending fails, the invitation is not saved
    either (the admin sees the error and can try again), rather than a pending invitation that
    nobody received.
    """
    token, token_hash = invitations.new_token()
    now = timezone.now()
    invitation.token_hash = token_hash
    invitation.sent_at = now
    invitation.expires_at = now + invitations.ttl()
    invitation.save()
    invitations.send_invitation_email(invitation, token, base_url=base_url)
    return token


@transaction.atomic
def invitation_create(
    *,
    organization: Organization,
    email: str,
    role: str,
    actor_role: str,
    actor: User | None,
    via_key: ApiKey | None = None,
    base_url: str | None = None,
) -> tuple[Invitation, str]:
    """Invite ``email`` to join with ``role`` and e-mail the link; returns the invitation and the
    token (the token only travels by e-mail; the API never shows it).

    The same rules as adding members: owners and admins invite, only owners invite owners.
    Whether the address has an account, or is already a member, changes nothing here: the
    invitation is created and the e-mail sent all the same (a member who follows it keeps their
    role), so the answer never tells the inviter anything about the address. Inviting an address
    that already has an open (pending or expired) invitation renews that one: new link, new
    expiry, the new role; the old link dies.
    """
    _check_role_change(actor_role=actor_role, old_role=None, new_role=role)
    if role not in Role.values:
        raise ValidationError({"role": f"Must be one of {Role.values}."})
    email = invitations.normalize_email(email)
    try:
        validate_email(email)
    except ValidationError as error:
        raise ValidationError({"email": error.messages}) from error
    # Serialise invitations per organisation, so two at once cannot both open one for an address.
    Organization.objects.select_for_update().filter(pk=organization.pk).first()
    existing = (
        Invitation.objects.select_for_update()
        .filter(organization=organization, email=email, accepted_at=None, revoked_at=None)
        .first()
    )
    before: dict[str, Any] | None = None
    if existing is not None:
        _check_role_change(actor_role=actor_role, old_role=existing.role, new_role=role)
        before = fields_of(existing, INVITATION_FIELDS)
        invitation = existing
        invitation.role = role
        invitation.invited_by = actor
    else:
        invitation = Invitation(organization=organization, email=email, role=role, invited_by=actor)
    invitation.expires_at = timezone.now()  # set for real by _issue_link
    invitation.token_hash = ""
    token = _issue_link(invitation, base_url=base_url)
    audit_record(
        organization=organization,
        actor=actor,
        via_key=via_key,
        action="member.invited",
        target=invitation,
        before=before,
        after=fields_of(invitation, INVITATION_FIELDS),
    )
    return invitation, token


def _check_may_manage_invitation(invitation: Invitation, actor_role: str) -> None:
    _check_role_change(actor_role=actor_role, old_role=invitation.role, new_role=invitation.role)


@transaction.atomic
def invitation_resend(
    *,
    invitation: Invitation,
    actor_role: str,
    actor: User | None,
    via_key: ApiKey | None = None,
    base_url: str | None = None,
) -> tuple[Invitation, str]:
    """Send a new link with a new expiry; the old link stops working at once (its token hash is
    replaced). A pending or expired invitation can be resent, not an accepted or revoked one."""
    _check_may_manage_invitation(invitation, actor_role)
    locked = (
        Invitation.objects.select_for_update().select_related("organization").get(pk=invitation.pk)
    )
    if locked.accepted_at is not None or locked.revoked_at is not None:
        raise ValidationError({"detail": f"This invitation is {locked.status}: invite again."})
    before = fields_of(locked, INVITATION_FIELDS)
    token = _issue_link(locked, base_url=base_url)
    audit_record(
        organization=locked.organization,
        actor=actor,
        via_key=via_key,
        action="member.invitation_resent",
        target=locked,
        before=before,
        after=fields_of(locked, INVITATION_FIELDS),
    )
    return locked, token


@transaction.atomic
def invitation_revoke(
    *,
    invitation: Invitation,
    actor_role: str,
    actor: User | None,
    via_key: ApiKey | None = None,
) -> Invitation:
    """Kill the link. Revoking a revoked invitation is a no-op (safe to retry); an accepted one
    cannot be revoked (remove the member instead)."""
    _check_may_manage_invitation(invitation, actor_role)
    locked = (
        Invitation.objects.select_for_update().select_related("organization").get(pk=invitation.pk)
    )
    if locked.revoked_at is not None:
        return locked
    if locked.accepted_at is not None:
        raise ValidationError({"detail": "This invitation was accepted: remove the member."})
    before = fields_of(locked, INVITATION_FIELDS)
    locked.revoked_at = timezone.now()
    locked.save(update_fields=["revoked_at"])
    audit_record(
        organization=locked.organization,
        actor=actor,
        via_key=via_key,
        action="member.invitation_revoked",
        target=locked,
        before=before,
        after=fields_of(locked, INVITATION_FIELDS),
    )
    return locked


def invitation_for_token(token: str) -> Invitation:
    """The usable invitation a link names, or ``InvitationUnusable`` (404 unknown, 410 used,
    revoked or expired). Read-only: for showing the accept page."""
    invitation = (
        Invitation.objects.select_related("organization", "invited_by")
        .filter(token_hash=keys.hash_key(token))
        .first()
    )
    return _usable(token, invitation)


def _usable(token: str, invitation: Invitation | None) -> Invitation:
    if invitation is None or not invitations.token_matches(token, invitation):
        raise invitations.InvitationUnusable("This invitation link is not valid.", status=404)
    state = invitation.status
    if state == Invitation.Status.ACCEPTED:
        raise invitations.InvitationUnusable("This invitation has already been used.")
    if state == Invitation.Status.REVOKED:
        raise invitations.InvitationUnusable("This invitation was withdrawn.")
    if state == Invitation.Status.EXPIRED:
        raise invitations.InvitationUnusable("This invitation has expired: ask for a new one.")
    if not invitation.organization.is_active:
        raise invitations.InvitationUnusable("This organisation is suspended.")
    return invitation


@transaction.atomic
def invitation_accept(*, token: str, user: User) -> Membership:
    """Join the organisation with the invitation's role; the link then never works again.

    The link is the proof: whoever holds it may accept, signed in as any account (the e-mail on
    the account need not match the invited address: people sign up with another address, or
    have none). The accepting account is recorded (``accepted_by``, and the ``member.joined``
    audit record). A user who is already a member keeps their role: the invitation is used up
    and nothing else changes.
    """
    locked = (
        Invitation.objects.select_for_update(of=("self",))
        .select_related("organization")
        .filter(token_hash=keys.hash_key(token))
        .first()
    )
    invitation = _usable(token, locked)
    now = timezone.now()
    invitation.accepted_at = now
    invitation.accepted_by = user
    invitation.save(update_fields=["accepted_at", "accepted_by"])
    membership, created = Membership.objects.get_or_create(
        organization=invitation.organization, user=user, defaults={"role": invitation.role}
    )
    audit_record(
        organization=invitation.organization,
        actor=user,
        action="member.joined",
        target=membership,
        before=None,
        after=fields_of(membership, MEMBERSHIP_FIELDS)
        | {"invitation": str(invitation.pk), "already_a_member": not created},
    )
    return membership


@transaction.atomic
def invitation_accept_as_new_user(*, token: str, username: str, password: str) -> Membership:
    """A new person follows the link: create their account (with the invited address as its
    e-mail) and join, in one transaction, so an unusable link creates no account. The view
    checks the username and password with Django's forms and validators first."""
    invitation = invitation_for_token(token)
    user = User.objects.create_user(username=username, email=invitation.email, password=password)
    return invitation_accept(token=token, user=user)


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


def _refuse_console_credential(api_key: ApiKey, what: str) -> None:
    """The playground's credentials are the console's to renew (``tenants.console_credentials``):
    nobody changes or rotates them by hand (a rotation would hand a person a secret of one).
    Revoking one is allowed: the console then issues a new one on the next message."""
    if api_key.source == ApiKey.Source.CONSOLE:
        raise ValidationError(
            {"detail": f"A console playground credential cannot be {what}; revoke it instead."}
        )


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
    via_key: ApiKey | None = None,
    source: str = ApiKey.Source.API,
    **limits: Any,
) -> tuple[ApiKey, str]:
    """Create a key and return it with its secret, which is never available again.

    The audit record names ``created_by`` as the actor (the person the key belongs to and who
    asked for it) and ``via_key`` when another key made the request. ``source`` is ``console``
    only for the playground's credentials (``tenants.console_credentials``).
    """
    api_key, plaintext = _api_key_insert(
        organization=organization,
        name=name,
        created_by=created_by,
        actor_role=actor_role,
        scopes=scopes,
        allowed_models=allowed_models,
        expires_at=expires_at,
        source=source,
        **limits,
    )
    audit_record(
        organization=organization,
        actor=created_by,
        via_key=via_key,
        action="api_key.created",
        target=api_key,
        after=fields_of(api_key, API_KEY_FIELDS),
    )
    return api_key, plaintext


def _api_key_insert(
    *,
    organization: Organization,
    name: str,
    created_by: User | None,
    actor_role: str,
    scopes: list[str] | None,
    allowed_models: list[str] | None,
    expires_at: datetime | None,
    source: str = ApiKey.Source.API,
    **limits: Any,
) -> tuple[ApiKey, str]:
    """Validate and insert a key (no audit record: create and rotate each write their own)."""
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
        source=source,
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
    via_key: ApiKey | None = None,
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
    before = fields_of(locked, API_KEY_FIELDS)
    if locked.revoked_at is not None:
        raise ValidationError({"detail": "A revoked key cannot be changed."})
    if locked.replaced_by_id is not None:
        raise ValidationError({"detail": "A key that was rotated out cannot be changed."})
    _refuse_console_credential(locked, "changed")
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
    after = fields_of(locked, API_KEY_FIELDS)
    differs = [field for field in API_KEY_FIELDS if before[field] != after[field]]
    if differs:
        audit_record(
            organization=locked.organization,
            actor=actor,
            via_key=via_key,
            action="api_key.updated",
            target=locked,
            before={field: before[field] for field in differs},
            after={field: after[field] for field in differs},
        )
    snapshot.publish_key_on_commit(locked.id)
    return locked


@transaction.atomic
def api_key_revoke(
    *, api_key: ApiKey, actor_role: str, actor: Any, via_key: ApiKey | None = None
) -> ApiKey:
    """Revoke at once. Revoking a revoked key is a no-op (and records nothing), so retries are
    safe."""
    _check_may_manage_key(api_key, actor_role=actor_role, actor=actor)
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
        audit_record(
            organization=api_key.organization,
            actor=actor,
            via_key=via_key,
            action="api_key.revoked",
            target=api_key,
            before={"revoked_at": None},
            after=fields_of(api_key, ["revoked_at"]),
        )
        snapshot.publish_key_on_commit(api_key.id)
    return api_key


@transaction.atomic
def api_key_rotate(
    *,
    api_key: ApiKey,
    actor_role: str,
    actor: Any,
    grace: timedelta = timedelta(0),
    via_key: ApiKey | None = None,
) -> tuple[ApiKey, str]:
    """Issue a new secret with the same settings and retire the old key.

    With no grace the old key is revoked now; with a grace period it expires then, so clients can
    switch over without an outage. Returns the new key and its secret (shown once).
    """
    _check_may_manage_key(api_key, actor_role=actor_role, actor=actor)
    # Lock the row so two concurrent rotations cannot both succeed.
    locked = ApiKey.objects.select_for_update().get(pk=api_key.pk)
    _refuse_console_credential(locked, "rotated")
    if locked.status != ApiKey.Status.ACTIVE or locked.replaced_by_id is not None:
        raise ValidationError({"detail": "Only an active key that was not rotated can be rotated."})
    if not timedelta(0) <= grace <= MAX_ROTATION_GRACE:
        raise ValidationError({"grace_seconds": f"Must be between 0 and {MAX_ROTATION_GRACE}."})
    before = fields_of(locked, API_KEY_FIELDS)
    new_key, plaintext = _api_key_insert(
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
    after = fields_of(locked, API_KEY_FIELDS)
    changed = [field for field in API_KEY_FIELDS if before[field] != after[field]]
    audit_record(
        organization=locked.organization,
        actor=actor,
        via_key=via_key,
        action="api_key.rotated",
        target=locked,
        before={field: before[field] for field in changed},
        after={field: after[field] for field in changed} | {"grace_seconds": grace.total_seconds()},
    )
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
