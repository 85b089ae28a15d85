"""Organisations (tenants), their members, API keys and limits.

Every tenant-owned row carries a non-null organisation: tenancy fails closed.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from tenants.plans import Plan


class Limits(models.Model):
    """Limit fields shared by organisations and API keys. ``None`` means "no limit here".

    A key's limits may only tighten its organisation's (``tenants.services``); the gateway
    enforces both the key's and the organisation's, so the tighter one always wins.
    """

    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveBigIntegerField(null=True, blank=True)
    max_concurrent_requests = models.PositiveIntegerField(null=True, blank=True)
    monthly_token_budget = models.PositiveBigIntegerField(null=True, blank=True)
    monthly_spend_budget = models.DecimalField(
        max_digits=14,
        decimal_places=4,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="In the platform currency.",
    )

    LIMIT_FIELDS = (
        "requests_per_minute",
        "tokens_per_minute",
        "max_concurrent_requests",
        "monthly_token_budget",
        "monthly_spend_budget",
    )

    class Meta:
        abstract = True


class BillingMode(models.TextChoices):
    POSTPAID = "postpaid", "Postpaid (monthly invoice)"
    PREPAID = "prepaid", "Prepaid (credit balance)"


class Organization(Limits):
    """A tenant: it owns members, API keys, usage and a bill."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=63, unique=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    plan = models.CharField(
        max_length=16,
        choices=Plan.choices,
        default=Plan.STANDARD,
        help_text="Set by platform staff; gives the organisation's requests their scheduling "
        "priority under load (tenants/plans.py).",
    )
    billing_mode = models.CharField(
        max_length=8,
        choices=BillingMode.choices,
        default=BillingMode.POSTPAID,
        help_text="Postpaid: invoiced monthly. Prepaid: requests spend a credit balance and are "
        'refused when it is exhausted (docs/billing.md, "Prepaid").',
    )
    prepaid_since = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="Start of the UTC hour from which usage is charged to the credit balance.",
    )
    payment_suspended_at = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="Set by dunning when an invoice stayed unpaid past its grace: the gateway "
        "refuses the organisation's keys until it is paid. Independent of ``status``.",
    )
    # Opt-in to the gateway's response cache (docs/response-cache.md): deterministic requests
    # that also ask for it may be answered from a cached response of the same model revision.
    response_cache_enabled = models.BooleanField(
        default=False,
        help_text="Deterministic requests that ask for it (header x-vlinders-cache: use) may be "
        "answered from the cache, metered at the model's cache-hit price.",
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE

    @property
    def is_prepaid(self) -> bool:
        return self.billing_mode == BillingMode.PREPAID


class Role(models.TextChoices):
    """Roles in an organisation, most powerful first.

    owner: everything, including owners; admin: members, keys, settings; member: read, and use
    inference with keys of their own; viewer: read-only.
    """

    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"
    VIEWER = "viewer", "Viewer"


class Membership(models.Model):
    """A user's role in one organisation. A user can belong to several organisations."""

    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="memberships"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "user"], name="uniq_membership")
        ]
        ordering = ["organization", "user"]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization} ({self.role})"


class Scope(models.TextChoices):
    """What an API key may do."""

    INFERENCE = "inference", "Inference (the OpenAI-compatible endpoints)"
    MANAGEMENT_READ = "management:read", "Read the management API"
    MANAGEMENT_WRITE = "management:write", "Write through the management API"


class ApiKey(Limits):
    """An API key of an organisation. The secret itself is never stored.

    Stored: an HMAC-SHA256 of the whole key under a server-side pepper (``secret_hash``), the
    random lookup part (``prefix``) and the last four characters, for display and look-up.
    """

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        EXPIRED = "expired", "Expired"
        REVOKED = "revoked", "Revoked"

    class Source(models.TextChoices):
        """Who holds the secret: a person or program (``api``, every key created through the API
        or the console's keys page), or the console itself (``console``: the playground's
        short-lived credential of one member, ``tenants.console_credentials``)."""

        API = "api", "API key"
        CONSOLE = "console", "Console playground credential"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="api_keys"
    )
    name = models.CharField(max_length=200)
    source = models.CharField(
        max_length=16,
        choices=Source.choices,
        default=Source.API,
        help_text="console: the playground's credential of one member, renewed by the console "
        "and never shown; its usage events are the console's.",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="created_api_keys",
    )
    prefix = models.CharField(max_length=32, unique=True)
    last_four = models.CharField(max_length=4)
    secret_hash = models.CharField(max_length=64, unique=True)
    scopes = models.JSONField(default=list)
    allowed_models = models.JSONField(
        default=list,
        blank=True,
        help_text="Model or alias names; empty means all the organisation may use.",
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    replaced_by = models.OneToOneField(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="replaces"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["organization", "-created_at"]
        indexes = [models.Index(fields=["organization", "created_at"])]
        constraints = [
            # One live console credential per member and organisation: it is renewed in place.
            models.UniqueConstraint(
                fields=["organization", "created_by"],
                condition=models.Q(source="console", revoked_at__isnull=True),
                name="uniq_live_console_credential",
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.display})"

    @property
    def display(self) -> str:
        """What a person may see of the key: enough to recognise it, not to use it."""
        from tenants.keys import KEY_PREFIX

        return f"{KEY_PREFIX}{self.prefix}…{self.last_four}"

    def status_at(self, moment: datetime) -> ApiKey.Status:
        if self.revoked_at is not None and self.revoked_at <= moment:
            return self.Status.REVOKED
        if self.expires_at is not None and self.expires_at <= moment:
            return self.Status.EXPIRED
        return self.Status.ACTIVE

    @property
    def status(self) -> ApiKey.Status:
        return self.status_at(timezone.now())


class AuditEvent(models.Model):
    """One change made by a mutating service: who, in which organisation, what, and the state of
    the target before and after.

    Written only by ``tenants.audit.audit_record``, inside the transaction of the change it
    records, so a change and its record commit or roll back together. ``before``/``after`` hold
    plain settings (names, roles, scopes, limits, statuses), never secrets: no key secrets or
    hashes, no invitation tokens, no passwords, no upstream credentials (``audit_record`` refuses
    them). ``organization`` is null only for platform-level actions.
    """

    id = models.BigAutoField(primary_key=True)
    organization = models.ForeignKey(
        Organization,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="audit_events",
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="The person behind the change; null for the system (or a key with no creator).",
    )
    actor_username = models.CharField(
        max_length=150, blank=True, help_text="The actor's username then (kept if they go)."
    )
    api_key = models.ForeignKey(
        "ApiKey",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="The API key the request was authenticated with, if any.",
    )
    action = models.CharField(max_length=64)
    target_type = models.CharField(max_length=64)
    target_id = models.CharField(max_length=64)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "created_at"]),
            models.Index(fields=["organization", "action", "created_at"]),
        ]

    def __str__(self) -> str:
        return (
            f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.action} {self.target_type}:{self.target_id}"
        )


class Invitation(models.Model):
    """An invitation to join an organisation with a role, sent to an e-mail address.

    The link carries a random token; only its HMAC-SHA256 is stored (``tenants.invitations``),
    like API keys. It works once, until ``expires_at``, unless revoked or resent (a resend gives a
    new token, so the old link dies). At most one invitation per address and organisation is
    pending at a time.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        ACCEPTED = "accepted", "Accepted"
        REVOKED = "revoked", "Revoked"
        EXPIRED = "expired", "Expired"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="invitations"
    )
    email = models.EmailField(help_text="Normalised: trimmed and lower-cased.")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    token_hash = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    sent_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["organization", "-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "email"],
                condition=models.Q(accepted_at__isnull=True, revoked_at__isnull=True),
                name="uniq_open_invitation",
            )
        ]
        indexes = [models.Index(fields=["organization", "created_at"])]

    def __str__(self) -> str:
        return f"{self.email} to {self.organization} ({self.role})"

    def status_at(self, moment: datetime) -> Invitation.Status:
        if self.accepted_at is not None:
            return self.Status.ACCEPTED
        if self.revoked_at is not None:
            return self.Status.REVOKED
        if self.expires_at <= moment:
            return self.Status.EXPIRED
        return self.Status.PENDING

    @property
    def status(self) -> Invitation.Status:
        return self.status_at(timezone.now())
