"""The billing page of an organisation: what it owes and has paid, and how to pay.

- Payment status: a banner when the organisation's keys are suspended for an unpaid invoice
  (``Organization.payment_suspended_at``, set by dunning) or an invoice is past due (a payment
  failed, or it is open past its due date: ``billing.documents.invoice_data.is_past_due``).
- Invoices: the finalised ones, newest first (``billing.selectors.invoices_of``), with a "Pay"
  link to Stripe's hosted page while open or past due, and PDF and CSV downloads.
- The upcoming invoice: the current month's draft (``billing.selectors.upcoming_invoice``),
  computed on request, never stored.
- Statements: usage of each month by day, model and key, as CSV and PDF
  (``billing.statements``).
- Prepaid organisations: the balance and its ledger of the last 30 days
  (``billing.prepaid.summary`` and ``ledger``), and a top-up form where Stripe is configured
  (``billing.topups.topup_start``: the member pays on Stripe Checkout; the credit arrives by
  webhook).

Billing is for owners and admins (``MANAGE``), as in the invoice API: members and viewers get
403, outsiders 404. Downloads are the same bytes as the API's (``billing.documents.downloads``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import path, re_path
from django.utils import timezone
from django.views.decorators.http import require_POST, require_safe

from billing import prepaid, selectors, statements, stripe_client, topups
from billing.documents import downloads
from billing.documents import formatting as fmt
from billing.documents.invoice_data import draft_document, is_past_due, is_payable, status_label
from billing.models import Invoice
from console.pages.account import add_service_error
from console.scoping import OrgContext, org_page
from tenants.roles import MANAGE

INVOICES_PER_PAGE = 24
LEDGER_DAYS = 30
STATEMENT_MONTHS = 24


class TopUpForm(forms.Form):
    """The shape of the request; the amount's rules (whole cents, bounds) are the service's."""

    amount = forms.DecimalField(
        label="Amount (USD)",
        min_value=Decimal("0.01"),
        max_digits=12,
        decimal_places=2,
        widget=forms.NumberInput(attrs={"step": "0.01", "inputmode": "decimal"}),
    )


@dataclass(frozen=True)
class InvoiceRow:
    """One invoice of the list, with the status the tenant reads."""

    invoice: Invoice
    status_label: str
    past_due: bool
    payable: bool


def _row(invoice: Invoice, now: datetime) -> InvoiceRow:
    return InvoiceRow(
        invoice=invoice,
        status_label=status_label(invoice, now),
        past_due=is_past_due(invoice, now),
        payable=is_payable(invoice),
    )


def _topup_allowed(ctx: OrgContext) -> bool:
    return ctx.organization.is_prepaid and stripe_client.configured()


def _page(
    request: HttpRequest, ctx: OrgContext, *, topup_form: TopUpForm | None = None, status: int = 200
) -> HttpResponse:
    organization = ctx.organization
    now = timezone.now()
    paginator = Paginator(selectors.invoices_of(organization), INVOICES_PER_PAGE)
    page = paginator.get_page(request.GET.get("page"))
    rows = [_row(invoice, now) for invoice in page.object_list]
    unpaid = selectors.invoices_of(organization).filter(
        status__in=[Invoice.Status.OPEN, Invoice.Status.PAST_DUE]
    )
    past_due = [_row(invoice, now) for invoice in unpaid if is_past_due(invoice, now)]
    upcoming = draft_document(selectors.upcoming_invoice(organization=organization, now=now))
    context: dict[str, Any] = {
        "section": "billing",
        "organization": organization,
        "suspended_at": organization.payment_suspended_at,
        "past_due": past_due,
        "invoices": rows,
        "page": page,
        "upcoming": upcoming,
        "statement_months": statements.statement_months(
            organization, now=now, limit=STATEMENT_MONTHS
        ),
        "prepaid": organization.is_prepaid,
        "topup_allowed": _topup_allowed(ctx),
        "topup_result": request.GET.get("topup", ""),
    }
    if organization.is_prepaid:
        today = now.astimezone(UTC).date()
        balance = prepaid.summary(organization)
        ledger = prepaid.ledger(
            organization, today - timedelta(days=LEDGER_DAYS - 1), today + timedelta(days=1)
        )
        # Exact figures, as on the documents: a balance is never rounded for display.
        context["balance"] = balance
        context["balance_labels"] = {
            "balance": fmt.exact(balance.balance),
            "credited": fmt.exact(balance.credited),
            "usage": fmt.exact(balance.usage),
        }
        context["ledger"] = ledger
        context["ledger_opening"] = fmt.exact(ledger.opening)
        context["ledger_rows"] = [
            (row, fmt.exact(row.amount), fmt.exact(row.balance)) for row in ledger.rows
        ]
        context["ledger_days"] = LEDGER_DAYS
        context["topup_form"] = topup_form or TopUpForm()
        low, high = topups.limits()
        context["topup_min"], context["topup_max"] = low, high
    return render(request, "console/billing/billing.html", context, status=status)


@org_page(read=MANAGE)
@require_safe
def billing(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    return _page(request, ctx)


@org_page(read=MANAGE, write=MANAGE)
@require_POST
def topup(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    """Start a top-up and send the member to Stripe Checkout; form errors re-render the page."""
    form = TopUpForm(request.POST)
    if not form.is_valid():
        return _page(request, ctx, topup_form=form, status=400)
    try:
        started = topups.topup_start(
            ctx.organization,
            form.cleaned_data["amount"],
            ctx.user,
            base_url=request.build_absolute_uri("/"),
        )
    except ValidationError as exc:
        add_service_error(form, exc)
        return _page(request, ctx, topup_form=form, status=400)
    except (stripe_client.StripeNotConfigured, topups.TopUpNotAllowed) as exc:
        messages.error(request, str(exc))
        return redirect("console:org-billing", ctx.organization.slug)
    except Exception:  # Stripe unreachable or refusing: nothing was charged
        messages.error(request, "Payments are unavailable right now; nothing was charged.")
        return redirect("console:org-billing", ctx.organization.slug)
    if not started.checkout_url:
        messages.error(request, "Payments are unavailable right now; nothing was charged.")
        return redirect("console:org-billing", ctx.organization.slug)
    return HttpResponseRedirect(started.checkout_url)


@org_page(read=MANAGE)
@require_safe
def invoice_document_download(
    request: HttpRequest, ctx: OrgContext, number: str, kind: str
) -> HttpResponse:
    return downloads.invoice_download(ctx.organization, number, kind)


@org_page(read=MANAGE)
@require_safe
def statement_download(
    request: HttpRequest, ctx: OrgContext, month: str, kind: str
) -> HttpResponse:
    try:
        return downloads.statement_download(ctx.organization, month, kind)
    except ValueError as exc:
        return HttpResponseBadRequest(str(exc), content_type="text/plain; charset=utf-8")


urlpatterns = [
    path("billing/", billing, name="org-billing"),
    path("billing/topup/", topup, name="org-billing-topup"),
    re_path(
        r"^billing/invoices/(?P<number>[0-9]+|upcoming)/(?P<kind>pdf|csv)/$",
        invoice_document_download,
        name="org-billing-invoice",
    ),
    re_path(
        r"^billing/statements/(?P<month>[^/]+)/(?P<kind>pdf|csv)/$",
        statement_download,
        name="org-billing-statement",
    ),
]
