"""Django admin for platform staff: usage events and rollups are read-only (facts, written only by
ingest); dead letters can be inspected, their events corrected while pending, and replayed
through the same ingest as the Celery task."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from billing import prepaid_services, services, spend
from billing.ingest import dead_letter_replay
from billing.models import (
    CreditEntry,
    DeadLetterBatch,
    Invoice,
    InvoiceAdjustment,
    InvoiceLine,
    PlanPrice,
    UsageEvent,
    UsageRollup,
)
from tenants.admin import OrganizationAdmin
from tenants.models import BillingMode, Organization
from vlinders.admin_base import ReadOnlyAdmin


class _UsageAdmin(ReadOnlyAdmin):
    """View-only: ingest is the only writer of these tables."""

    show_full_result_count = False  # no COUNT(*) over millions of events on every page


@admin.register(UsageEvent)
class UsageEventAdmin(_UsageAdmin):
    list_display = [
        "request_id",
        "started_at",
        "organization_id",
        "api_key_id",
        "model",
        "served_model",
        "status",
        "prompt_tokens",
        "completion_tokens",
        "cost",
        "cache_hit",
    ]
    list_filter = ["endpoint", "stream", "cache_hit"]
    # Exact matches only: they use the primary key, a LIKE over every event would not.
    search_fields = ["=request_id", "=http_request_id"]
    ordering = ["-started_at"]


@admin.register(UsageRollup)
class UsageRollupAdmin(_UsageAdmin):
    list_display = [
        "hour",
        "organization_id",
        "api_key_id",
        "model",
        "requests",
        "errors",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "cost",
    ]
    list_filter = ["model"]
    date_hierarchy = "hour"
    ordering = ["-hour"]


@admin.register(DeadLetterBatch)
class DeadLetterBatchAdmin(admin.ModelAdmin[DeadLetterBatch]):
    list_display = ["created_at", "status", "event_count", "attempts", "task_id", "short_error"]
    list_filter = ["status"]
    search_fields = ["=task_id"]
    actions = ["replay"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def get_readonly_fields(self, request: HttpRequest, obj: DeadLetterBatch | None = None) -> Any:
        fields = ["task_id", "error", "attempts", "status", "created_at", "replayed_at"]
        if obj is not None and obj.status != DeadLetterBatch.Status.PENDING:
            fields.append("events")  # only a pending batch's events may be corrected
        return fields

    @admin.display(description="events")
    def event_count(self, obj: DeadLetterBatch) -> int:
        return len(obj.events) if isinstance(obj.events, list) else 1

    @admin.display(description="error")
    def short_error(self, obj: DeadLetterBatch) -> str:
        lines = obj.error.strip().splitlines()
        return lines[-1][:120] if lines else ""

    @admin.action(description="Replay selected dead letters (idempotent)")
    def replay(self, request: HttpRequest, queryset: QuerySet[DeadLetterBatch]) -> None:
        inserted = replayed = pending = 0
        for dead_letter_id in queryset.order_by("created_at").values_list("pk", flat=True):
            try:
                outcome = dead_letter_replay(dead_letter_id=dead_letter_id, actor=request.user)
            except Exception as exc:
                self.message_user(
                    request, f"{dead_letter_id}: replay failed: {exc}", messages.ERROR
                )
                continue
            inserted += outcome.result.inserted
            replayed += outcome.replayed
            pending += bool(outcome.still_invalid)
        level = messages.WARNING if pending else messages.SUCCESS
        self.message_user(
            request,
            f"{replayed} dead letters replayed, {inserted} events ingested; "
            f"{pending} still hold invalid events.",
            level,
        )


# --- Invoices (docs/billing.md, "Invoices") ------------------------------------------------------


@admin.register(PlanPrice)
class PlanPriceAdmin(admin.ModelAdmin[PlanPrice]):
    """The price book: staff edit each plan's monthly base fee (USD). A change applies to the
    invoices finalised from then on."""

    list_display = ["plan", "monthly_fee", "updated_at"]
    list_editable = ["monthly_fee"]
    readonly_fields = ["updated_at"]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class InvoiceLineInline(admin.TabularInline[InvoiceLine, Invoice]):
    model = InvoiceLine
    extra = 0
    can_delete = False
    fields = ("position", "kind", "description", "input_tokens", "output_tokens", "amount")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyAdmin):
    """Finalised invoices are immutable: view-only. Their status changes through the actions
    (the services), which audit them."""

    list_display = [
        "display_number",
        "organization",
        "period",
        "status",
        "total",
        "issued_at",
    ]
    list_filter = ["status", "period"]
    search_fields = ["=number", "organization__slug"]
    inlines = [InvoiceLineInline]
    actions = ["mark_paid", "void"]

    @admin.action(description="Mark the selected open invoices paid")
    def mark_paid(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        self._each(request, queryset, services.invoice_mark_paid, "marked paid")

    @admin.action(description="Void the selected open invoices")
    def void(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        self._each(request, queryset, services.invoice_void, "voided")

    def _each(
        self, request: HttpRequest, queryset: QuerySet[Invoice], service: Any, done: str
    ) -> None:
        count = 0
        for invoice in queryset:
            try:
                service(invoice_id=invoice.pk, actor=request.user)
                count += 1
            except ValidationError as exc:
                self.message_user(request, f"{invoice}: {exc.messages[0]}", messages.ERROR)
        self.message_user(request, f"{count} invoice(s) {done}.", messages.SUCCESS)


class InvoiceAdjustmentForm(forms.ModelForm):  # type: ignore[type-arg]
    amount = forms.DecimalField(
        max_digits=14, decimal_places=2, min_value=Decimal("0.01"), help_text="Positive, USD."
    )

    class Meta:
        model = InvoiceAdjustment
        fields = ["organization", "period", "kind", "amount", "reason"]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        try:
            services.invoice_adjustment_check(
                kind=data.get("kind", ""),
                amount=data.get("amount") or Decimal(0),
                reason=data.get("reason", ""),
            )
        except ValidationError as exc:
            raise forms.ValidationError(exc.messages) from exc
        return data


@admin.register(InvoiceAdjustment)
class InvoiceAdjustmentAdmin(admin.ModelAdmin[InvoiceAdjustment]):
    """Credit notes and one-off charges: created here (through the service, audited), never
    edited or deleted."""

    form = InvoiceAdjustmentForm
    list_display = ["organization", "period", "kind", "amount", "reason", "invoice", "created_at"]
    list_filter = ["kind", "period"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        return {"period": spend.current_month()}

    def save_model(
        self, request: HttpRequest, obj: InvoiceAdjustment, form: Any, change: bool
    ) -> None:
        created = services.invoice_adjustment_create(
            organization_id=obj.organization_id,
            period=obj.period,
            kind=obj.kind,
            amount=form.cleaned_data["amount"],
            reason=obj.reason,
            actor=request.user,
        )
        obj.pk, obj.amount, obj.created_by = created.pk, created.amount, created.created_by
        obj._state.adding = False


# --- Prepaid credit (docs/billing.md, "Prepaid") -------------------------------------------------
class CreditAdjustmentForm(forms.ModelForm):  # type: ignore[type-arg]
    """A staff adjustment: the organisation, a signed amount and the reason (``description``)."""

    amount = forms.DecimalField(
        max_digits=16,
        decimal_places=6,
        help_text="Signed, USD: positive credits the balance, negative debits it.",
    )
    description = forms.CharField(label="Reason", max_length=300)

    class Meta:
        model = CreditEntry
        fields = ["organization", "amount", "description"]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        try:
            prepaid_services.credit_adjust_check(
                data.get("amount") or Decimal(0), data.get("description", "")
            )
        except ValidationError as exc:
            raise forms.ValidationError(exc.messages) from exc
        return data


@admin.register(CreditEntry)
class CreditEntryAdmin(admin.ModelAdmin[CreditEntry]):
    """The credit ledger: top-ups (written by the Stripe webhook) and adjustments. Entries are
    never edited or deleted; staff add adjustments here, through the audited service
    (``prepaid_services.credit_adjust``), which also republishes the gateway's balance."""

    form = CreditAdjustmentForm
    list_display = ["organization", "kind", "amount", "description", "reference", "created_at"]
    list_filter = ["kind"]
    search_fields = ["organization__slug", "reference"]
    list_select_related = ["organization"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: CreditEntry, form: Any, change: bool) -> None:
        created = prepaid_services.credit_adjust(
            obj.organization, form.cleaned_data["amount"], obj.description, request.user
        )
        obj.pk, obj.kind, obj.reference = created.pk, created.kind, created.reference
        obj.amount, obj.created_by = created.amount, created.created_by
        obj._state.adding = False


# The billing mode is switched by actions on the organisation's admin page (tenants.admin), added
# from here because tenants must not import billing (the apps' layering); the mode field itself
# is read-only there, so every switch goes through the audited service.
def _set_mode(request: HttpRequest, queryset: QuerySet[Organization], mode: str) -> int:
    changed = 0
    for org in queryset:
        before = org.billing_mode
        prepaid_services.billing_mode_set(org, mode, request.user)
        changed += before != mode
    return changed


@admin.action(description="Make selected organisations prepaid (they spend a credit balance)")
def make_prepaid(
    modeladmin: admin.ModelAdmin[Organization],
    request: HttpRequest,
    queryset: QuerySet[Organization],
) -> None:
    changed = _set_mode(request, queryset, BillingMode.PREPAID)
    modeladmin.message_user(request, f"{changed} organisation(s) made prepaid.", messages.SUCCESS)


@admin.action(description="Make selected organisations postpaid (invoiced monthly)")
def make_postpaid(
    modeladmin: admin.ModelAdmin[Organization],
    request: HttpRequest,
    queryset: QuerySet[Organization],
) -> None:
    changed = _set_mode(request, queryset, BillingMode.POSTPAID)
    modeladmin.message_user(request, f"{changed} organisation(s) made postpaid.", messages.SUCCESS)


OrganizationAdmin.actions = [*(OrganizationAdmin.actions or ()), make_prepaid, make_postpaid]


# --- Stripe and dunning (docs/billing.md, "Stripe" and "Dunning") ---
# Invoices show their payment state and Stripe id, and can be pushed to Stripe again; Stripe's
# customers, top-ups and webhook events are read-only (Stripe and the webhook write them), and an
# event that failed can be processed again once the cause is fixed.
import stripe  # noqa: E402

from billing import stripe_client, stripe_events, stripe_sync  # noqa: E402
from billing.models import StripeCustomer, StripeEvent, TopUp  # noqa: E402

InvoiceAdmin.list_display = [
    *InvoiceAdmin.list_display,
    "due_at",
    "payment_failed_at",
    "stripe_invoice_id",
]


@admin.action(description="Push the selected open invoices to Stripe")
def push_to_stripe(
    modeladmin: admin.ModelAdmin[Invoice], request: HttpRequest, queryset: QuerySet[Invoice]
) -> None:
    if not stripe_client.configured():
        modeladmin.message_user(request, "Payments are not configured.", messages.ERROR)
        return
    pushed = 0
    for invoice in queryset:
        try:
            if stripe_sync.invoice_push(invoice.pk).payment_url:
                pushed += 1
        except stripe.StripeError as exc:
            modeladmin.message_user(request, f"{invoice}: {exc}", messages.ERROR)
    modeladmin.message_user(request, f"{pushed} invoice(s) on Stripe.", messages.SUCCESS)


InvoiceAdmin.actions = [*(InvoiceAdmin.actions or ()), push_to_stripe]


@admin.register(StripeCustomer)
class StripeCustomerAdmin(ReadOnlyAdmin):
    list_display = ["organization", "customer_id", "email", "created_at"]
    search_fields = ["organization__slug", "=customer_id", "email"]


@admin.register(TopUp)
class TopUpAdmin(ReadOnlyAdmin):
    list_display = ["organization", "amount", "status", "created_at", "completed_at"]
    list_filter = ["status"]
    search_fields = ["organization__slug", "=stripe_session_id"]


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdmin):
    list_display = ["event_id", "type", "stripe_created", "received_at", "processed_at", "attempts"]
    list_filter = ["type", ("processed_at", admin.EmptyFieldListFilter)]
    search_fields = ["=event_id", "type"]
    actions = ["process_again"]

    @admin.action(description="Process the selected unprocessed events now")
    def process_again(self, request: HttpRequest, queryset: QuerySet[StripeEvent]) -> None:
        done = 0
        for event in queryset.filter(processed_at__isnull=True):
            try:
                done += int(stripe_events.process(event.event_id))
            except Exception as exc:
                self.message_user(request, f"{event.event_id}: {exc}", messages.ERROR)
        self.message_user(request, f"{done} event(s) processed.", messages.SUCCESS)


# --- end of Stripe and dunning ---
