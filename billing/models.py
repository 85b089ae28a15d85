"""Metering: every usage event the gateway emitted (contract 4), hourly rollups of them, the
batches that could not be ingested, and budget alerts.

Money is ``Decimal`` everywhere (``COST_FIELD``), never a float: a request's cost is computed by
the gateway at the price it served the request at and travels in the event as a decimal string.

Organisation and key columns are foreign keys *without* a database constraint: a usage event is a
fact about the past and must be stored even when the organisation or key it names was deleted (or
is unknown) by the time the batch arrives; joins still work for the ones that exist.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from tenants.models import ApiKey, Organization
from tenants.plans import Plan


def cost_field(**kwargs: object) -> models.DecimalField:  # type: ignore[type-arg]
    """USD with 12 decimal places: a price per million tokens has 6, so a token count times a
    price divided by a million is exact."""
    return models.DecimalField(max_digits=24, decimal_places=12, **kwargs)  # type: ignore[arg-type]


def _tenant_fk(model: type[models.Model], **kwargs: object) -> models.ForeignKey:  # type: ignore[type-arg]
    return models.ForeignKey(
        model,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
        **kwargs,  # type: ignore[arg-type]
    )


class UsageEvent(models.Model):
    """One request that passed authentication at the gateway (docs/usage-events.md). The event's
    ``null`` strings are stored as empty strings.

    ``request_id`` is the primary key: ingesting is ``INSERT … ON CONFLICT DO NOTHING`` on it, which
    is what makes a redelivered batch harmless.
    """

    request_id = models.CharField(max_length=64, primary_key=True)
    organization = _tenant_fk(Organization)
    api_key = _tenant_fk(ApiKey)
    model = models.CharField(max_length=128, help_text="The name the client asked for.")
    served_model = models.CharField(
        max_length=128, blank=True, help_text="The catalog model that ran (prices come from it)."
    )
    endpoint = models.CharField(max_length=32)
    stream = models.BooleanField()
    status = models.PositiveSmallIntegerField()
    error_type = models.CharField(max_length=64, blank=True, help_text="Empty on success.")
    finish_reason = models.CharField(max_length=32, blank=True)
    prompt_tokens = models.PositiveIntegerField()
    completion_tokens = models.PositiveIntegerField()
    cached_tokens = models.PositiveIntegerField()
    cost = cost_field()
    # The prices the request was served at (USD per million tokens; added to schema 1 of the
    # event, docs/usage-events.md). Empty for events of gateways that sent only their cost.
    price_input_per_mtok = models.DecimalField(
        max_digits=12, decimal_places=6, null=True, blank=True
    )
    price_output_per_mtok = models.DecimalField(
        max_digits=12, decimal_places=6, null=True, blank=True
    )
    latency_ms = models.FloatField()
    ttft_ms = models.FloatField(null=True, blank=True)
    started_at = models.DateTimeField()
    http_request_id = models.CharField(max_length=128, blank=True)
    received_at = models.DateTimeField(default=timezone.now)
    # Replayed from the response cache (the event's ``cache`` is "hit"; docs/response-cache.md):
    # its prices are the model's cache-hit price.
    # A database default too: rows written by raw SQL that predates the column (bulk loads,
    # tools) are not hits.
    cache_hit = models.BooleanField(default=False, db_default=False)

    class Meta:
        indexes = [
            # The per-tenant read path ("this organisation's requests between t0 and t1").
            models.Index(fields=["organization", "started_at"], name="usage_event_org_time"),
            # Retention pruning walks the oldest events first.
            models.Index(fields=["started_at"], name="usage_event_time"),
        ]

    def __str__(self) -> str:
        return self.request_id


class UsageRollup(models.Model):
    """Hourly totals per organisation, key and served model. Every dashboard, report, budget and
    the usage API read these, never the raw events (which are pruned after a retention period).

    Rows are only ever incremented, by the ingest task, with what it newly inserted.
    """

    hour = models.DateTimeField(help_text="Start of the UTC hour the requests started in.")
    organization = _tenant_fk(Organization)
    api_key = _tenant_fk(ApiKey)
    model = models.CharField(max_length=128, help_text="The served (priced) catalog model.")
    requests = models.PositiveBigIntegerField(default=0)
    errors = models.PositiveBigIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    cached_tokens = models.PositiveBigIntegerField(default=0)
    cost = cost_field(default=0)
    # The prices the requests were served at (USD per million tokens): part of the row's key, so
    # a price change within an hour starts a new row and ``tokens * price`` stays exact per row.
    # Empty for events that carried no prices (older gateways). Migration billing 0004.
    price_input_per_mtok = models.DecimalField(
        max_digits=12, decimal_places=6, null=True, blank=True
    )
    price_output_per_mtok = models.DecimalField(
        max_digits=12, decimal_places=6, null=True, blank=True
    )

    class Meta:
        constraints = [
            # Two partial constraints instead of one with NULLS NOT DISTINCT, which SQLite lacks
            # (Django creates none there): one row per group and prices, and one per group for
            # usage without prices. The ingest's upserts name one of them each (ingest_sql.py).
            models.UniqueConstraint(
                fields=[
                    "organization",
                    "hour",
                    "api_key",
                    "model",
                    "price_input_per_mtok",
                    "price_output_per_mtok",
                ],
                condition=models.Q(price_input_per_mtok__isnull=False),
                name="usage_rollup_unique",
            ),
            models.UniqueConstraint(
                fields=["organization", "hour", "api_key", "model"],
                condition=models.Q(price_input_per_mtok__isnull=True),
                name="usage_rollup_unique_unpriced",
            ),
            models.CheckConstraint(
                condition=models.Q(
                    price_input_per_mtok__isnull=True, price_output_per_mtok__isnull=True
                )
                | models.Q(price_input_per_mtok__isnull=False, price_output_per_mtok__isnull=False),
                name="usage_rollup_prices_both_or_neither",
            ),
        ]
        indexes = [
            models.Index(fields=["hour"], name="usage_rollup_hour"),
            # The readers' path (an organisation's hours, by key and model), which the partial
            # unique indexes cannot serve: a query without a price condition may not use them.
            models.Index(
                fields=["organization", "hour", "api_key", "model"], name="usage_rollup_org_hour"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.organization_id} {self.hour:%Y-%m-%d %H}h {self.model}"


class DeadLetterBatch(models.Model):
    """A batch of usage events that could not be ingested after every retry. Nothing is dropped:
    an operator sees it in the admin and replays it (``manage.py usage_dead_letters``)."""

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting for an operator"
        REPLAYED = "replayed", "Replayed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    task_id = models.CharField(max_length=255, blank=True)
    events = models.JSONField()
    error = models.TextField()
    attempts = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    created_at = models.DateTimeField(default=timezone.now)
    replayed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "dead-letter batch"
        verbose_name_plural = "dead-letter batches"

    def __str__(self) -> str:
        return f"{len(self.events)} events ({self.get_status_display()})"


class BudgetAlert(models.Model):
    """An organisation (or one of its keys) crossed a percentage of a monthly budget. One row per
    threshold per month: the unique constraint is what stops a second notification."""

    class Kind(models.TextChoices):
        SPEND = "spend", "Monthly spend"
        TOKENS = "tokens", "Monthly tokens"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="budget_alerts"
    )
    api_key = models.ForeignKey(
        ApiKey, on_delete=models.CASCADE, null=True, blank=True, related_name="budget_alerts"
    )
    month = models.CharField(max_length=7, help_text="YYYY-MM (UTC).")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    threshold_percent = models.PositiveSmallIntegerField()
    used = models.DecimalField(max_digits=24, decimal_places=12)
    budget = models.DecimalField(max_digits=24, decimal_places=12)
    created_at = models.DateTimeField(default=timezone.now)
    notified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        # Two partial constraints instead of one with NULLS NOT DISTINCT, which SQLite lacks.
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "month", "kind", "threshold_percent"],
                condition=models.Q(api_key__isnull=True),
                name="budget_alert_once_per_org",
            ),
            models.UniqueConstraint(
                fields=["api_key", "month", "kind", "threshold_percent"],
                condition=models.Q(api_key__isnull=False),
                name="budget_alert_once_per_key",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.organization_id} {self.kind} {self.threshold_percent}% {self.month}"


# --- Invoices (docs/billing.md, "Invoices") ------------------------------------------------------


def money_field(**kwargs: object) -> models.DecimalField:  # type: ignore[type-arg]
    """An amount in the currency's minor unit (USD cents): what an invoice's total is."""
    return models.DecimalField(max_digits=14, decimal_places=2, **kwargs)  # type: ignore[arg-type]


class PlanPrice(models.Model):
    """The price book of a plan: its monthly base fee. Staff edit it in the admin; the fee an
    invoice charges is the one in force when it is built (finalised), copied onto its line.

    Token prices are not per plan: the gateway charges the catalog's prices of the served model
    and every usage event carries its own cost.
    """

    plan = models.CharField(max_length=16, choices=Plan.choices, unique=True)
    monthly_fee = money_field(default=Decimal(0), validators=[MinValueValidator(Decimal(0))])
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["plan"]
        verbose_name = "plan price"

    def __str__(self) -> str:
        return f"{self.plan}: {self.monthly_fee} USD/month"


class InvoiceSequence(models.Model):
    """The counter invoice numbers are taken from, one row per sequence name. Incremented under
    ``SELECT … FOR UPDATE`` in the transaction that inserts the invoice: a number is consumed only
    when that invoice commits, so the numbers have no gaps (a Postgres SEQUENCE would leave gaps
    on rollback)."""

    name = models.CharField(max_length=32, primary_key=True)
    last_number = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name}: {self.last_number}"


class Invoice(models.Model):
    """An organisation's invoice for a calendar month (UTC).

    Only finalised invoices are stored (``open`` and later): the draft of a month is computed on
    the fly from the rollups (``billing.invoices.invoice_build``). After finalisation nothing but
    the status (``open`` → ``paid`` / ``void``) ever changes; corrections are adjustments on a
    later invoice.
    """

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft (upcoming)"
        OPEN = "open", "Open (finalised, unpaid)"
        PAST_DUE = "past_due", "Past due (a payment failed)"
        PAID = "paid", "Paid"
        VOID = "void", "Void"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="invoices"
    )
    period = models.CharField(max_length=7, help_text="YYYY-MM (UTC).")
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.DRAFT)
    number = models.PositiveBigIntegerField(
        null=True, blank=True, unique=True, help_text="Gap-free, assigned at finalisation."
    )
    currency = models.CharField(max_length=3, default="USD")
    plan = models.CharField(max_length=16, blank=True, help_text="The plan billed.")
    period_start = models.DateTimeField()
    period_end = models.DateTimeField(help_text="Exclusive.")
    subtotal = cost_field(help_text="Exact sum of the lines (12 decimal places).")
    total = money_field(help_text="The subtotal rounded once to cents (ROUND_HALF_UP).")
    rounding = cost_field(help_text="total - subtotal.")
    # The tax in force when the invoice was built (billing/tax.py), kept on the invoice so a later
    # change of the settings changes no finalised invoice. No rate: no tax line.
    tax_name = models.CharField(max_length=32, blank=True)
    tax_rate_percent = models.DecimalField(max_digits=7, decimal_places=4, null=True, blank=True)
    tax = money_field(default=Decimal(0), help_text="On the total, rounded once to cents.")
    issued_at = models.DateTimeField(null=True, blank=True)
    due_at = models.DateTimeField(null=True, blank=True, help_text="Payment due by.")
    paid_at = models.DateTimeField(null=True, blank=True)
    voided_at = models.DateTimeField(null=True, blank=True)
    payment_failed_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="First failed payment of the current dunning; empty once paid.",
    )
    stripe_invoice_id = models.CharField(max_length=255, blank=True, db_index=True)
    payment_url = models.URLField(
        max_length=2048, blank=True, help_text="Where the organisation pays (Stripe's hosted page)."
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-period", "-number"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "period"],
                condition=~models.Q(status="draft"),
                name="invoice_once_per_org_period",
            ),
            models.CheckConstraint(
                condition=models.Q(status="draft") | models.Q(number__isnull=False),
                name="invoice_finalised_has_number",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.display_number} {self.organization_id} {self.period}"

    @property
    def total_due(self) -> Decimal:
        """What the organisation pays: the total plus its tax."""
        return self.total + self.tax

    @property
    def display_number(self) -> str:
        return f"VL-{self.number:08d}" if self.number is not None else "DRAFT"


class InvoiceLine(models.Model):
    class Kind(models.TextChoices):
        USAGE = "usage", "Usage of a model"
        BASE_FEE = "base_fee", "Plan base fee"
        CREDIT = "credit", "Credit note"
        CHARGE = "charge", "One-off charge"
        PREPAID = "prepaid", "Paid from prepaid credit"

    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    position = models.PositiveSmallIntegerField()
    kind = models.CharField(max_length=16, choices=Kind.choices)
    description = models.CharField(max_length=300)
    model = models.CharField(max_length=128, blank=True)
    requests = models.PositiveBigIntegerField(default=0)
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cached_tokens = models.PositiveBigIntegerField(default=0)
    # "quantity times unit price = amount" for a usage line of one token kind at one price: tokens,
    # and USD per million of them. Empty where the usage was metered without its prices.
    unit = models.CharField(max_length=16, blank=True, help_text="input_tokens, output_tokens")
    quantity = models.PositiveBigIntegerField(default=0)
    unit_price_per_mtok = models.DecimalField(
        max_digits=12, decimal_places=6, null=True, blank=True
    )
    amount = cost_field()

    class Meta:
        ordering = ["invoice", "position"]
        constraints = [
            models.UniqueConstraint(fields=["invoice", "position"], name="invoice_line_position")
        ]

    def __str__(self) -> str:
        return f"{self.description}: {self.amount}"


class InvoiceAdjustment(models.Model):
    """A credit note (negative amount) or one-off charge (positive) staff issued for an
    organisation's month, with a reason (audited). It appears on that month's draft and becomes a
    line of its invoice at finalisation (``invoice`` is then set). A finalised month takes none:
    a correction of it goes on a later month."""

    class Kind(models.TextChoices):
        CREDIT = "credit", "Credit note"
        CHARGE = "charge", "One-off charge"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="invoice_adjustments"
    )
    period = models.CharField(max_length=7, help_text="YYYY-MM (UTC) of the invoice it goes on.")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    amount = money_field(help_text="Signed: negative for a credit note.")
    reason = models.TextField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    invoice = models.ForeignKey(
        Invoice, on_delete=models.PROTECT, null=True, blank=True, related_name="adjustments"
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["organization", "period"], name="invoice_adj_org_period")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.amount} {self.organization_id} {self.period}"


# --- Prepaid credit, Stripe (docs/billing.md, "Prepaid" and "Stripe") -----------------------


class CreditEntry(models.Model):
    """A movement of a prepaid organisation's credit balance other than usage: a top-up (positive)
    or a staff adjustment (signed). Usage is not copied here: it is read from the rollups, so the
    balance is ``sum(credit entries) - cost of usage since prepaid_since``.

    ``reference`` is unique and derived from what caused the entry (``checkout:<session id>``,
    ``adjustment:<uuid>``): crediting the same top-up twice is refused by the database.
    """

    class Kind(models.TextChoices):
        TOPUP = "topup", "Top-up"
        ADJUSTMENT = "adjustment", "Adjustment"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="credit_entries"
    )
    kind = models.CharField(max_length=16, choices=Kind.choices)
    amount = cost_field(help_text="Signed, in the platform currency.")
    reference = models.CharField(max_length=255, unique=True)
    description = models.CharField(max_length=300, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["organization", "created_at"], name="credit_entry_org")]
        verbose_name_plural = "credit entries"

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.amount} {self.organization_id}"


class TopUp(models.Model):
    """A top-up a member started: a Stripe Checkout session for ``amount``. Credited exactly once,
    when Stripe reports the session completed (webhook ``checkout.session.completed``), as the
    credit entry ``checkout:<stripe_session_id>``."""

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting for payment"
        COMPLETED = "completed", "Paid and credited"
        EXPIRED = "expired", "Expired unpaid"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="topups")
    amount = money_field(validators=[MinValueValidator(Decimal("0.01"))])
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    stripe_session_id = models.CharField(max_length=255, blank=True, db_index=True)
    checkout_url = models.URLField(max_length=2048, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["stripe_session_id"],
                condition=~models.Q(stripe_session_id=""),
                name="topup_session_once",
            )
        ]

    def __str__(self) -> str:
        return f"top-up {self.amount} {self.organization_id} ({self.status})"


class StripeCustomer(models.Model):
    """The Stripe customer of an organisation: created once, on first need, with an idempotency
    key derived from the organisation's id, so two workers never create two."""

    organization = models.OneToOneField(
        Organization, on_delete=models.PROTECT, primary_key=True, related_name="stripe_customer"
    )
    customer_id = models.CharField(max_length=255, unique=True)
    email = models.EmailField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.customer_id


class StripeEvent(models.Model):
    """A webhook event Stripe sent, stored on receipt (verified signature) unique by Stripe's
    event id: a redelivered event is recognised and not processed twice. A Celery task processes
    it and sets ``processed_at`` in the same transaction as its effect."""

    event_id = models.CharField(max_length=255, primary_key=True)
    type = models.CharField(max_length=128)
    payload = models.JSONField()
    stripe_created = models.DateTimeField(null=True, blank=True, help_text="Stripe's 'created'.")
    received_at = models.DateTimeField(default=timezone.now)
    processed_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-received_at"]
        indexes = [models.Index(fields=["processed_at"], name="stripe_event_unprocessed")]

    def __str__(self) -> str:
        return f"{self.event_id} {self.type}"
