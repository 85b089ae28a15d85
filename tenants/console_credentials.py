"""The playground's credentials: short-lived API keys the console holds for a signed-in member.

The playground is a client of the gateway like any other (DESIGN.md, "The console"): its requests
carry an ordinary API key, so the gateway authenticates, limits and meters them exactly as it does
a tenant's program. That key (``console_credential_issue``):

- is an ``ApiKey`` row with ``source="console"``, named "Console playground · <username>",
  created by the member (``created_by``), scope ``inference`` only, every model the organisation
  may use, and the console's own rate limits (``console_limits``) inside the organisation's;
- is issued only to someone who may use inference in the organisation (member and up), asked of
  the same role selector as everything else at every issue, so a demoted member gets nothing more;
- lives ``credential_ttl()`` (15 minutes). The console reuses it while more than ``min_left()``
  remains and then *renews it in place*: a new secret and expiry on the same row (audited as
  ``api_key.renewed``). One row per member and organisation, for good: their playground use adds
  up under one key in every report (usage by key, top keys, requests), the usage events it
  produced stay recognisable as the console's (``tenants.selectors.console_key_ids``) for as
  long as they are kept, and there is nothing to clean up. A renewed-away secret is held by
  nobody; its access-snapshot record dies at its expiry or at the next periodic full republish
  (which drops records with no row behind them), whichever comes first;
- is published to the access snapshot after commit, like every key, so the gateway knows it
  within a second; revoking it (an admin, by the API) works as for any key, and the console
  issues a fresh row on the next message.

The plaintext secret never reaches a browser and is never stored in the database, the session or
a page. It lives in Redis, encrypted with the platform's Fernet keys (``VLINDERS_SECRETS_KEY``),
under ``<prefix>console:credential:<key id>``, expiring with the credential. Redis rather than
the Django session because (1) the session is per browser: a member with two tabs or devices
would renew each other's secret away, while one secret per member is shared by all of them and
every console process; (2) database sessions are signed, not encrypted, so the secret would sit
in plain text in ``django_session``; (3) Redis expires it by itself. Possession of the stored
secret grants nothing to a person: only the console's playground endpoint uses it, and that
endpoint checks the signed-in member's role on every message.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

import redis
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone

from tenants import keys, services, snapshot
from tenants.audit import audit_record, fields_of
from tenants.models import ApiKey, Limits, Organization, Scope
from tenants.roles import USE, role_at_least
from tenants.selectors import membership_role
from vlinders.redis import get_redis, redis_key

logger = logging.getLogger(__name__)

NAME_FORMAT = "Console playground · {username}"

# Defaults of the settings this module reads (``getattr``, so a deployment may set them).
DEFAULT_TTL_S = 15 * 60
DEFAULT_MIN_LEFT_S = 2 * 60
DEFAULT_LIMITS: dict[str, int] = {"requests_per_minute": 30, "max_concurrent_requests": 2}

# What the audit log keeps of a renewal: never ``secret_hash``.
RENEWED_FIELDS = ("name", "prefix", "last_four", "expires_at", "scopes", *Limits.LIMIT_FIELDS)


def credential_ttl() -> timedelta:
    """How long a console credential lives (``VLINDERS_CONSOLE_CREDENTIAL_TTL_S``, 900 s)."""
    seconds = getattr(settings, "VLINDERS_CONSOLE_CREDENTIAL_TTL_S", DEFAULT_TTL_S)
    return timedelta(seconds=float(seconds))


def min_left() -> timedelta:
    """A credential with less than this left is renewed rather than reused
    (``VLINDERS_CONSOLE_CREDENTIAL_MIN_LEFT_S``, 120 s)."""
    seconds = getattr(settings, "VLINDERS_CONSOLE_CREDENTIAL_MIN_LEFT_S", DEFAULT_MIN_LEFT_S)
    return timedelta(seconds=float(seconds))


def console_limits(organization: Organization) -> dict[str, Any]:
    """The key limits of a console credential: ``VLINDERS_CONSOLE_CREDENTIAL_LIMITS`` (30
    requests a minute, 2 at a time), each capped by the organisation's own (a key may only
    tighten them). The organisation's limits and budgets apply at the gateway as well."""
    wanted = dict(getattr(settings, "VLINDERS_CONSOLE_CREDENTIAL_LIMITS", DEFAULT_LIMITS))
    limits: dict[str, Any] = {}
    for name, value in wanted.items():
        if name not in Limits.LIMIT_FIELDS:
            raise ValueError(f"VLINDERS_CONSOLE_CREDENTIAL_LIMITS: {name!r} is not a limit.")
        theirs = getattr(organization, name)
        limits[name] = value if theirs is None or value is None else min(value, theirs)
    return limits


@dataclass(frozen=True)
class ConsoleCredential:
    """A usable console credential: the row and its secret (server-side only)."""

    api_key: ApiKey
    secret: str = field(repr=False)
    issued: bool  # True when this call minted or renewed it, False when it reused one

    @property
    def expires_at(self) -> datetime:
        assert self.api_key.expires_at is not None
        return self.api_key.expires_at


def console_credential_of(*, organization: Organization, user: Any) -> ApiKey | None:
    """The member's live (not revoked) console credential in ``organization``, if any."""
    return ApiKey.objects.filter(
        organization=organization,
        created_by=user,
        source=ApiKey.Source.CONSOLE,
        revoked_at=None,
    ).first()


def console_credential_issue(*, organization: Organization, user: Any) -> ConsoleCredential:
    """A credential for ``user``'s playground requests in ``organization``: the current one when
    more than ``min_left()`` of it remains, else a renewed (or, the first time, a new) one.

    Refuses (``PermissionDenied``) anyone whose role there is below member: viewers and people
    who are not members (platform staff act as owners, as everywhere). Reusing costs one indexed
    read and one Redis read; issuing locks the user's row, so two messages sent at once share
    one new secret instead of renewing each other's away.
    """
    role = membership_role(user=user, organization=organization)
    if not role_at_least(role, USE):
        raise PermissionDenied("Only members, admins and owners may use the playground.")
    current = console_credential_of(organization=organization, user=user)
    if current is not None:
        secret = _usable_secret(current, timezone.now())
        if secret is not None:
            return ConsoleCredential(api_key=current, secret=secret, issued=False)
    assert role is not None
    return _issue(organization=organization, user=user, role=role)


@transaction.atomic
def _issue(*, organization: Organization, user: Any, role: str) -> ConsoleCredential:
    user_model = get_user_model()
    # One issue at a time per person (then look again: the other one may have just issued).
    user_model.objects.select_for_update().filter(pk=user.pk).values_list("pk").first()
    current = (
        ApiKey.objects.select_for_update()
        .filter(
            organization=organization,
            created_by=user,
            source=ApiKey.Source.CONSOLE,
            revoked_at=None,
        )
        .first()
    )
    now = timezone.now()
    name = NAME_FORMAT.format(username=user.get_username())[:200]
    expires_at = now + credential_ttl()
    limits = console_limits(organization)
    if current is None:
        api_key, secret = services.api_key_create(
            organization=organization,
            name=name,
            created_by=user,
            actor_role=role,
            scopes=[Scope.INFERENCE.value],
            allowed_models=[],
            expires_at=expires_at,
            source=ApiKey.Source.CONSOLE,
            **limits,
        )
    else:
        reusable = _usable_secret(current, now)
        if reusable is not None:
            return ConsoleCredential(api_key=current, secret=reusable, issued=False)
        api_key, secret = _renew(
            current,
            organization=organization,
            name=name,
            expires_at=expires_at,
            limits=limits,
            by=user,
        )
    _remember_on_commit(api_key, secret)
    return ConsoleCredential(api_key=api_key, secret=secret, issued=True)


def _renew(
    api_key: ApiKey,
    *,
    organization: Organization,
    name: str,
    expires_at: datetime,
    limits: dict[str, Any],
    by: Any,
) -> tuple[ApiKey, str]:
    """A new secret and expiry on the (locked) row, with today's name, scope and limits."""
    services._validate_key_settings(
        organization=organization,
        scopes=[Scope.INFERENCE.value],
        allowed_models=[],
        expires_at=expires_at,
        limits=limits,
    )
    before = fields_of(api_key, RENEWED_FIELDS)
    fresh = keys.generate()
    api_key.prefix, api_key.last_four = fresh.lookup, fresh.last_four
    api_key.secret_hash = fresh.secret_hash
    api_key.expires_at = expires_at
    api_key.name = name
    api_key.scopes = [Scope.INFERENCE.value]
    api_key.allowed_models = []
    for limit, value in limits.items():
        setattr(api_key, limit, value)
    api_key.full_clean()
    api_key.save(
        update_fields=[
            "prefix",
            "last_four",
            "secret_hash",
            "expires_at",
            "name",
            "scopes",
            "allowed_models",
            *limits,
        ]
    )
    after = fields_of(api_key, RENEWED_FIELDS)
    changed = [f for f in RENEWED_FIELDS if before[f] != after[f]]
    audit_record(
        organization=organization,
        actor=by,
        action="api_key.renewed",
        target=api_key,
        before={f: before[f] for f in changed},
        after={f: after[f] for f in changed},
    )
    snapshot.publish_key_on_commit(api_key.id)
    return api_key, fresh.plaintext


# --- the secret, server-side ------------------------------------------------------------------


def _store_name(key_id: Any) -> str:
    return redis_key("console", "credential", str(key_id))


@lru_cache(maxsize=4)
def _fernet(secret_keys: str) -> MultiFernet:
    return MultiFernet([Fernet(k.strip()) for k in secret_keys.split(",") if k.strip()])


def _cipher() -> MultiFernet:
    return _fernet(str(settings.VLINDERS_SECRETS_KEY))


def _usable_secret(api_key: ApiKey, now: datetime) -> str | None:
    """The stored secret of ``api_key`` if it is the row's current one and enough of it is left."""
    if api_key.expires_at is None or api_key.expires_at - now < min_left():
        return None
    token = get_redis().get(_store_name(api_key.pk))
    if token is None:
        return None
    try:
        secret = _cipher().decrypt(token).decode()
    except InvalidToken:
        return None
    return secret if keys.matches(secret, api_key.secret_hash) else None


def _remember_on_commit(api_key: ApiKey, secret: str) -> None:
    """Store the secret after the commit, and after the key's snapshot publish (registered
    before, so it runs first): another console process that finds it can use it at once."""
    assert api_key.expires_at is not None
    expires_at = api_key.expires_at

    def remember() -> None:
        seconds = math.ceil((expires_at - timezone.now()).total_seconds())
        if seconds <= 0:
            return
        try:
            get_redis().set(_store_name(api_key.pk), _cipher().encrypt(secret.encode()), ex=seconds)
        except redis.RedisError:
            # Only reuse is lost: the next message issues again.
            logger.exception("console credential %s: storing its secret failed", api_key.pk)

    transaction.on_commit(remember)


def console_credential_forget(key_id: Any) -> None:
    """Drop the stored secret of the credential ``key_id``, so the next issue renews it (the
    playground does when the gateway refuses the secret: a snapshot that lost its record)."""
    get_redis().delete(_store_name(key_id))
