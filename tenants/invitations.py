"""Invitation links: their tokens, how they are stored, the e-mail that carries them, and the
errors an unusable link gives.

A token is ``vli_`` + 43 URL-safe random characters (256 bits). Only its HMAC-SHA256 under the
platform's pepper is stored (``tenants.keys.hash_key``, as for API keys), so a database leak gives
no working links; a presented token is found by its hash, which is a unique index, and the hash
comparison itself is constant-time (``hmac.compare_digest``).
"""

from __future__ import annotations

import hmac
import secrets
from datetime import timedelta

from django.conf import settings
from django.core.mail import send_mail

from tenants.keys import hash_key
from tenants.models import Invitation

TOKEN_PREFIX = "vli_"


class InvitationUnusable(Exception):
    """The link cannot be used. ``status`` is the HTTP status a page answers with: 404 when no
    invitation has this token (never had one, or it was resent and the old link died), 410 when
    it existed but is used, revoked or expired."""

    status = 410

    def __init__(self, message: str, *, status: int = 410) -> None:
        super().__init__(message)
        self.status = status


def ttl() -> timedelta:
    """How long a link works: ``VLINDERS_INVITATION_TTL_DAYS`` (default 7)."""
    return timedelta(days=settings.VLINDERS_INVITATION_TTL_DAYS)


def new_token() -> tuple[str, str]:
    """A fresh token and its hash: the token goes in the e-mail, the hash in the database."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, hash_key(token)


def token_matches(token: str, invitation: Invitation) -> bool:
    return hmac.compare_digest(hash_key(token), invitation.token_hash)


def normalize_email(email: str) -> str:
    """Addresses compare case-insensitively: one pending invitation per address, whatever its
    capitalisation."""
    return email.strip().lower()


def accept_url(token: str, *, base_url: str | None) -> str:
    """The absolute link in the e-mail: ``VLINDERS_CONSOLE_URL`` when set (preferred: a link
    built from the request's Host header is only as trustworthy as ``ALLOWED_HOSTS``), else
    ``base_url`` (the request's own scheme and host), else a relative path."""
    base = settings.VLINDERS_CONSOLE_URL or base_url or ""
    return f"{base.rstrip('/')}/invitations/{token}/"


def send_invitation_email(invitation: Invitation, token: str, *, base_url: str | None) -> None:
    """Send the link. The same text whether or not the address has an account or is already a
    member: the e-mail, like the API's answer, reveals nothing about the address."""
    organization = invitation.organization
    link = accept_url(token, base_url=base_url)
    inviter = invitation.invited_by.get_username() if invitation.invited_by else "An administrator"
    body = (
        f"{inviter} invited you to join {organization.name} on Vlinders as {invitation.role}.\n\n"
        f"Accept the invitation here (the link works once, until "
        f"{invitation.expires_at:%Y-%m-%d %H:%M} UTC):\n\n{link}\n\n"
        "If you did not expect this, ignore this e-mail.\n"
    )
    send_mail(
        subject=f"Join {organization.name} on Vlinders",
        message=body,
        from_email=None,
        recipient_list=[invitation.email],
    )
