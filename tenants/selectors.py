"""Reads for organisations, memberships and API keys."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from tenants import keys
from tenants.models import ApiKey, Membership, Organization, Role


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
