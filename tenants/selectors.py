"""Reads for organisations, memberships and API keys."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.utils import timezone

from tenants import keys
from tenants.models import ApiKey, AuditEvent, Invitation, Membership, Organization, Role


def organizations_for_user(user: Any) -> QuerySet[Organization]:
    """Organisations a user may see: all of them for platform staff, else their memberships."""
    if getattr(user, "is_staff", False):
        return Organization.objects.all()
    return Organization.objects.filter(memberships__user=user)


def membership_role(*, user: Any, organization: Organization) -> Role | None:
    """The user's role in the organisation; platform staff act as owners everywhere."""
    if getattr(user, "is_staff", False):
        return Role.OWNER
    role = (
        Membership.objects.filter(organization=organization, user=user)
        .values_list("role", flat=True)
        .first()
    )
    return Role(role) if role is not None else None


def memberships_of(organization: Organization) -> QuerySet[Membership]:
    """An organisation's members with their users, longest-standing first."""
    return organization.memberships.select_related("user").order_by("created_at", "pk")


def invitation_status_filter(status: str, *, at: datetime | None = None) -> Q:
    """The invitations in ``status`` (an ``Invitation.Status``) at ``at`` (default now), as a
    query: the same states ``Invitation.status_at`` computes for one row, so a filtered list
    and the status it shows agree."""
    moment = at if at is not None else timezone.now()
    open_ = Q(accepted_at__isnull=True, revoked_at__isnull=True)
    states = {
        Invitation.Status.ACCEPTED: Q(accepted_at__isnull=False),
        Invitation.Status.REVOKED: Q(accepted_at__isnull=True, revoked_at__isnull=False),
        Invitation.Status.EXPIRED: open_ & Q(expires_at__lte=moment),
        Invitation.Status.PENDING: open_ & Q(expires_at__gt=moment),
    }
    try:
        return states[Invitation.Status(status)]
    except ValueError as error:
        raise ValueError(f"Unknown invitation status {status!r}.") from error


def invitations_of(
    organization: Organization, *, status: str | None = None
) -> QuerySet[Invitation]:
    """An organisation's invitations, newest first, with who sent and who accepted them;
    ``status`` keeps only those in that state (see ``invitation_status_filter``)."""
    invitations = organization.invitations.select_related("invited_by", "accepted_by").order_by(
        "-created_at", "pk"
    )
    if status:
        invitations = invitations.filter(invitation_status_filter(status))
    return invitations


def api_key_from_plaintext(plaintext: str) -> ApiKey | None:
    """Find the key a client presented, comparing hashes in constant time.

    Looks up by the random lookup prefix (indexed), then compares the HMAC, so neither the
    database query nor the comparison leaks how much of a guess was right.
    """
    lookup = keys.parse_lookup(plaintext)
    if lookup is None:
        return None
    candidate = (
        ApiKey.objects.select_related("organization", "created_by").filter(prefix=lookup).first()
    )
    if candidate is None or not keys.matches(plaintext, candidate.secret_hash):
        return None
    return candidate


# --- API keys as the console lists them ---------------------------------------------------------

# What a key's status filter offers: ``ApiKey.Status`` plus ``rotating`` (rotated out, still
# working until its grace period ends).
API_KEY_STATUS_FILTERS = ("active", "rotating", "expired", "revoked")


def api_keys_for_organization(
    organization: Organization,
    *,
    search: str = "",
    status: str = "",
    created_by: Any = None,
    now: datetime | None = None,
) -> QuerySet[ApiKey]:
    """An organisation's keys, newest first, each with its creator (one query per page).

    ``search`` matches any part of the name (any case), or the start of the key as the list shows
    it (``vlk_`` + lookup prefix, ``…`` + last four allowed); ``status`` is one of
    ``API_KEY_STATUS_FILTERS`` (anything else: every key), decided as ``ApiKey.status_at`` does;
    ``created_by`` keeps the keys that person created.
    """
    moment = now if now is not None else timezone.now()
    rows = organization.api_keys.select_related("created_by").order_by("-created_at", "pk")
    search = search.strip()
    if search:
        lookup = search.removeprefix(keys.KEY_PREFIX).split("…")[0].split("...")[0]
        matches = Q(name__icontains=search)
        if lookup:
            matches |= Q(prefix__startswith=lookup)
        rows = rows.filter(matches)
    revoked = Q(revoked_at__lte=moment)
    expired = Q(expires_at__lte=moment)
    if status == "revoked":
        rows = rows.filter(revoked)
    elif status == "expired":
        rows = rows.exclude(revoked).filter(expired)
    elif status in ("active", "rotating"):
        rows = rows.exclude(revoked).exclude(expired)
        if status == "rotating":
            rows = rows.filter(replaced_by__isnull=False)
    if created_by is not None:
        rows = rows.filter(created_by=created_by)
    return rows


def api_key_manageable(api_key: ApiKey, *, actor_role: str, actor: Any) -> bool:
    """Whether ``actor``, acting with ``actor_role``, may change, rotate or revoke ``api_key``.

    Asks the services' own rule (``_check_may_manage_key``: admins every key, members the keys
    they created) without acting, so a page hides exactly the controls the service would refuse.
    """
    from tenants import services  # the writes' module; imported here, where it is needed

    try:
        services._check_may_manage_key(api_key, actor_role=actor_role, actor=actor)
    except PermissionDenied:
        return False
    return True


def console_key_ids(organization: Organization) -> QuerySet[ApiKey, Any]:
    """The ids of ``organization``'s console playground credentials (``source="console"``,
    revoked ones included), as a subquery: usage events whose ``api_key_id`` is in it came
    from the console's playground, e.g.
    ``UsageEvent.objects.filter(organization=org, api_key_id__in=console_key_ids(org))``
    (``.exclude`` for everything else). One row per member who used the playground, so small."""
    return ApiKey.objects.filter(organization=organization, source=ApiKey.Source.CONSOLE).values(
        "pk"
    )


# --- The audit log as the console lists it ------------------------------------------------------


def audit_events(
    organization: Organization,
    *,
    action: str = "",
    actor: str = "",
    start: datetime | None = None,
    end: datetime | None = None,
) -> QuerySet[AuditEvent]:
    """An organisation's audit records, newest first (``created_at``, then id), each filter
    optional: one action, one actor (the username recorded with the change), ``start``
    inclusive, ``end`` exclusive. Served by the indexes on (organisation, created_at) and
    (organisation, action, created_at)."""
    events = AuditEvent.objects.filter(organization=organization)
    if action:
        events = events.filter(action=action)
    if actor:
        events = events.filter(actor_username=actor)
    if start is not None:
        events = events.filter(created_at__gte=start)
    if end is not None:
        events = events.filter(created_at__lt=end)
    return events.order_by("-created_at", "-id")


def audit_actors(organization: Organization, *, limit: int = 200) -> list[str]:
    """The usernames that appear as actors in the organisation's audit log (for a filter's
    suggestions), sorted, at most ``limit``."""
    return list(
        AuditEvent.objects.filter(organization=organization)
        .exclude(actor_username="")
        .order_by("actor_username")
        .values_list("actor_username", flat=True)
        .distinct()[:limit]
    )
