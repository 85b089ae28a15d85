"""What an invoice document shows, gathered once for the PDF, the CSV and the console: seller,
buyer, number, dates, period, lines, totals, tax and status. Built from a finalised ``Invoice``
and its stored lines, or from a draft (``billing.selectors.InvoiceDraft``: the upcoming invoice),
which is clearly marked as such.

Amounts are the invoice's own: line amounts and the subtotal exact (12 decimal places), the total
rounded once to cents as stored; the tax is the invoice's own (set by ``billing.tax.apply_tax``
when it was built), the amount the Stripe push charges too, and ``total_due = total + tax``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.utils import timezone

from billing.documents import formatting as fmt
from billing.documents.seller import Seller, seller
from billing.models import Invoice, InvoiceLine
from billing.selectors import InvoiceDraft, invoice_lines
from tenants.models import Membership, Organization, Role

UNIT_LABELS = {"input_tokens": "input tokens", "output_tokens": "output tokens"}
# Statuses a tenant reads, and the mark a document carries across its pages (none for open).
STATUS_LABELS = {
    Invoice.Status.DRAFT: "Draft",
    Invoice.Status.OPEN: "Open",
    Invoice.Status.PAST_DUE: "Past due",
    Invoice.Status.PAID: "Paid",
    Invoice.Status.VOID: "Void",
}
WATERMARKS = {
    Invoice.Status.DRAFT: "DRAFT",
    Invoice.Status.PAST_DUE: "PAST DUE",
    Invoice.Status.PAID: "PAID",
    Invoice.Status.VOID: "VOID",
}


@dataclass(frozen=True, slots=True)
class Buyer:
    name: str
    slug: str
    emails: list[str]


@dataclass(frozen=True, slots=True)
class DocumentLine:
    """One line as documents show it. ``unit``/``quantity``/``unit_price_per_mtok`` are set for
    usage metered with its prices (one line per token kind and price); empty otherwise, and the
    line is read by its tokens and amount."""

    position: int
    kind: str
    description: str
    model: str
    unit: str
    quantity: int
    unit_price_per_mtok: Decimal | None
    requests: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    amount: Decimal

    @property
    def priced(self) -> bool:
        return bool(self.unit) and self.unit_price_per_mtok is not None

    @property
    def quantity_lines(self) -> list[str]:
        """The quantity, one line per figure (a usage line without prices has two)."""
        if self.priced:
            return [f"{fmt.count(self.quantity)} {UNIT_LABELS.get(self.unit, self.unit)}"]
        if self.kind == InvoiceLine.Kind.USAGE:
            return [
                f"{fmt.count(self.input_tokens)} input tokens",
                f"{fmt.count(self.output_tokens)} output tokens",
            ]
        return ["1"]

    @property
    def quantity_label(self) -> str:
        return " + ".join(self.quantity_lines)

    @property
    def unit_price_label(self) -> str:
        if self.priced:
            assert self.unit_price_per_mtok is not None
            return f"{fmt.exact(self.unit_price_per_mtok)} / 1M tokens"
        if self.kind == InvoiceLine.Kind.USAGE:
            return "—"
        return fmt.exact(self.amount)

    @property
    def amount_label(self) -> str:
        return fmt.exact(self.amount)


@dataclass(frozen=True, slots=True)
class InvoiceDocument:
    invoice: Invoice
    seller: Seller
    buyer: Buyer
    lines: list[DocumentLine]
    tax_name: str
    tax_rate_percent: Decimal | None
    tax: Decimal
    past_due: bool

    @property
    def is_draft(self) -> bool:
        return self.invoice.status == Invoice.Status.DRAFT

    @property
    def number(self) -> str:
        return self.invoice.display_number

    @property
    def status(self) -> str:
        return Invoice.Status.PAST_DUE if self.past_due else self.invoice.status

    @property
    def status_label(self) -> str:
        return STATUS_LABELS.get(Invoice.Status(self.status), self.status)

    @property
    def watermark(self) -> str | None:
        return WATERMARKS.get(Invoice.Status(self.status))

    @property
    def currency(self) -> str:
        return self.invoice.currency

    @property
    def period(self) -> str:
        return self.invoice.period

    @property
    def period_first_day(self) -> date:
        return self.invoice.period_start.date()

    @property
    def period_last_day(self) -> date:
        return (self.invoice.period_end - timedelta(microseconds=1)).date()

    @property
    def issue_date(self) -> date | None:
        return self.invoice.issued_at.date() if self.invoice.issued_at else None

    @property
    def due_date(self) -> date | None:
        return self.invoice.due_at.date() if self.invoice.due_at else None

    @property
    def subtotal(self) -> Decimal:
        return self.invoice.subtotal

    @property
    def rounding(self) -> Decimal:
        return self.invoice.rounding

    @property
    def total(self) -> Decimal:
        return self.invoice.total

    @property
    def total_due(self) -> Decimal:
        return self.invoice.total + self.tax

    @property
    def payable(self) -> bool:
        return is_payable(self.invoice)

    @property
    def filename_stem(self) -> str:
        org = self.invoice.organization.slug
        if self.is_draft:
            return f"invoice-{org}-{self.period}-draft"
        return f"invoice-{org}-{self.number}"

    # What the templates print, formatted once here.
    @property
    def subtotal_label(self) -> str:
        return fmt.exact(self.subtotal)

    @property
    def rounding_label(self) -> str:
        return fmt.exact(self.rounding)

    @property
    def total_label(self) -> str:
        return fmt.cents(self.total)

    @property
    def tax_label(self) -> str:
        return fmt.cents(self.tax)

    @property
    def tax_rate_label(self) -> str:
        rate = self.tax_rate_percent
        return f"{rate.normalize():f}" if rate is not None else ""

    @property
    def total_due_label(self) -> str:
        return fmt.cents(self.total_due)


def is_past_due(invoice: Invoice, now: datetime | None = None) -> bool:
    """Past due: a payment failed (``past_due``), or it is open and its due date has passed."""
    if invoice.status == Invoice.Status.PAST_DUE:
        return True
    now = now or timezone.now()
    return invoice.status == Invoice.Status.OPEN and bool(invoice.due_at and invoice.due_at < now)


def is_payable(invoice: Invoice) -> bool:
    """Whether a "pay" link belongs with it: finalised, unpaid, with a payment page."""
    return bool(invoice.payment_url) and invoice.status in (
        Invoice.Status.OPEN,
        Invoice.Status.PAST_DUE,
    )


def status_label(invoice: Invoice, now: datetime | None = None) -> str:
    """The status a tenant reads: past due as soon as ``is_past_due``."""
    if is_past_due(invoice, now):
        return STATUS_LABELS[Invoice.Status.PAST_DUE]
    return STATUS_LABELS.get(Invoice.Status(invoice.status), invoice.status)


def buyer_of(organization: Organization) -> Buyer:
    """The organisation billed: its name, slug and its active owners' e-mail addresses."""
    emails = (
        Membership.objects.filter(organization=organization, role=Role.OWNER, user__is_active=True)
        .exclude(user__email="")
        .order_by("user__email")
        .values_list("user__email", flat=True)
    )
    return Buyer(name=organization.name, slug=organization.slug, emails=list(dict.fromkeys(emails)))


def _line(line: InvoiceLine) -> DocumentLine:
    return DocumentLine(
        position=line.position,
        kind=line.kind,
        description=line.description,
        model=line.model,
        unit=line.unit,
        quantity=line.quantity,
        unit_price_per_mtok=line.unit_price_per_mtok,
        requests=line.requests,
        input_tokens=line.input_tokens,
        output_tokens=line.output_tokens,
        cached_tokens=line.cached_tokens,
        amount=line.amount,
    )


def _document(invoice: Invoice, lines: list[InvoiceLine], now: datetime | None) -> InvoiceDocument:
    return InvoiceDocument(
        invoice=invoice,
        seller=seller(),
        buyer=buyer_of(invoice.organization),
        lines=[_line(line) for line in lines],
        tax_name=invoice.tax_name,
        tax_rate_percent=invoice.tax_rate_percent,
        tax=invoice.tax,
        past_due=is_past_due(invoice, now),
    )


def invoice_document(invoice: Invoice, *, now: datetime | None = None) -> InvoiceDocument:
    """The document of a finalised invoice, from its stored lines."""
    return _document(invoice, invoice_lines(invoice), now)


def draft_document(draft: InvoiceDraft, *, now: datetime | None = None) -> InvoiceDocument:
    """The document of a draft (not stored; marked DRAFT, no number, no issue date)."""
    return _document(draft.invoice, draft.lines, now)
