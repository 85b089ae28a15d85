"""Billing documents (docs/billing.md, "Documents"): the invoice as PDF and CSV, the upcoming
draft, the monthly statement as CSV and PDF, the tax rule, offline rendering, and the API's
roles and errors."""

from __future__ import annotations

import csv
import datetime as dt
import io
from decimal import Decimal

import pytest
import weasyprint
from django.db.models import Sum
from django.utils import timezone
from rest_framework.test import APIClient

from billing import selectors, services, statements, tax
from billing.documents.invoice_csv import invoice_csv
from billing.documents.invoice_data import draft_document, invoice_document
from billing.documents.invoice_pdf import TEMPLATE as INVOICE_TEMPLATE
from billing.documents.invoice_pdf import invoice_pdf
from billing.documents.render import OfflineFetcher, render_document
from billing.documents.statement import TEMPLATE as STATEMENT_TEMPLATE
from billing.documents.statement import statement_context, statement_pdf
from billing.models import Invoice, InvoiceLine, UsageRollup
from billing.selectors import InvoiceDraft
from tenants.models import ApiKey, Role
from tests.billing.documents_support import (
    ARTIFACTS,
    PERIOD,
    ROLLUPS,
    START,
    finalised_invoice,
    layout_text,
    make_month,
)
from tests.billing.usage_data import add_rollup
from tests.factories import MembershipFactory, OrganizationFactory, UserFactory

pytestmark = pytest.mark.django_db

BASE = "/api/v1/orgs/acme"


@pytest.fixture
def billed(org, owner, staff):  # type: ignore[no-untyped-def]
    org.created_at = START
    org.save()
    make_month(org)
    return finalised_invoice(org, staff)


@pytest.fixture
def as_admin(org):  # type: ignore[no-untyped-def]
    user = MembershipFactory(organization=org, user=UserFactory(username="admin"), role=Role.ADMIN)
    client = APIClient()
    client.force_login(user.user)
    return client


def _csv_rows(body: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body.decode())))


def _text(doc) -> str:  # type: ignore[no-untyped-def]
    return layout_text(render_document(INVOICE_TEMPLATE, {"doc": doc}))


# --- the tax rule ---------------------------------------------------------------------------------
def test_no_tax_unless_a_rate_is_configured(settings) -> None:  # type: ignore[no-untyped-def]
    settings.VLINDERS_TAX_RATE_PERCENT = ""
    assert tax.tax_rate_percent() is None
    assert tax.tax_of(Decimal("100.00")) == Decimal("0.00")


def test_tax_is_rounded_once_to_cents_half_up(settings) -> None:  # type: ignore[no-untyped-def]
    settings.VLINDERS_TAX_RATE_PERCENT = "21"
    settings.VLINDERS_TAX_NAME = "VAT"
    assert tax.tax_of(Decimal("0.05")) == Decimal("0.01")  # 0.0105
    assert tax.tax_of(Decimal("0.50")) == Decimal("0.11")  # 0.105, half up
    assert tax.tax_of(Decimal("-0.50")) == Decimal("-0.11")  # a credit: symmetric
    assert tax.tax_of(Decimal("19.99")) == Decimal("4.20")  # 4.1979
    settings.VLINDERS_TAX_RATE_PERCENT = "8.875"
    assert tax.tax_of(Decimal("10.00")) == Decimal("0.89")  # 0.8875
    assert tax.tax_name() == "VAT"


def test_a_malformed_tax_rate_is_a_configuration_error(settings) -> None:  # type: ignore[no-untyped-def]
    settings.VLINDERS_TAX_RATE_PERCENT = "twenty"
    with pytest.raises(ValueError, match="VLINDERS_TAX_RATE_PERCENT"):
        tax.tax_of(Decimal(1))
    with pytest.raises(TypeError):
        tax.tax_of(1.5)  # type: ignore[arg-type]


# --- the invoice PDF ------------------------------------------------------------------------------
def test_invoice_pdf_is_an_invoice_with_seller_buyer_lines_and_totals(
    as_owner, billed, settings
) -> None:  # type: ignore[no-untyped-def]
    settings.VLINDERS_SELLER_NAME = "Vlinders Test B.V."
    settings.VLINDERS_SELLER_ADDRESS = "Herengracht 9\\n1015 BA Amsterdam"
    settings.VLINDERS_SELLER_TAX_ID = "NL000099998B57"
    response = as_owner.get(f"{BASE}/invoices/{billed.number}/pdf/")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    number = billed.display_number
    assert response["Content-Disposition"] == f'attachment; filename="invoice-acme-{number}.pdf"'
    assert response.content.startswith(b"%PDF-")
    assert b"%%EOF" in response.content[-32:]

    text = _text(invoice_document(billed))
    for expected in (
        "Vlinders Test B.V.",
        "Herengracht 9",
        "1015 BA Amsterdam",
        "NL000099998B57",
        "Acme",
        "owner@example.test",  # the owners' e-mail
        number,
        "2026-10-01",
        "2026-10-31",
        "llama-8b",
        "4,000,000 input tokens",  # the priced rollup: quantity and unit price
        "0.15 / 1M tokens",
        "1,000,000 output tokens",
        "0.60 / 1M tokens",
        "qwen-0.5b",
        "minilm",
        "Standard plan",
        "19.00",
        "Outage on 3 October",
        "-2.50",
        f"USD {billed.total:,f}",
    ):
        assert expected in text, expected
    # An open invoice carries no mark.
    assert "DRAFT" not in text
    assert "PAID" not in text
    # Each line's exact amount is printed, not a rounded one.
    for line in billed.lines.all():
        assert f"{line.amount.normalize():f}".rstrip("0") in text.replace(",", "")


def test_invoice_total_is_the_exact_sum_rounded_once(billed) -> None:  # type: ignore[no-untyped-def]
    usage = sum(Decimal(row[-1]) for row in ROLLUPS)
    assert billed.subtotal == usage + Decimal("19.00") - Decimal("2.50")
    assert billed.total == billed.subtotal.quantize(Decimal("0.01"))


def test_paid_past_due_and_void_invoices_are_marked(billed, staff) -> None:  # type: ignore[no-untyped-def]
    billed.due_at = timezone.now() - dt.timedelta(days=1)
    billed.payment_url = "https://pay.example.test/inv_1"
    billed.save(update_fields=["due_at", "payment_url"])
    doc = invoice_document(billed)
    assert doc.past_due
    assert doc.status_label == "Past due"
    assert doc.payable
    text = _text(doc)
    assert "PAST DUE" in text
    assert "https://pay.example.test/inv_1" in text

    paid = services.invoice_mark_paid(invoice_id=billed.pk, actor=staff)
    doc = invoice_document(paid)
    assert not doc.past_due
    assert not doc.payable
    text = _text(doc)
    assert "PAID" in text
    assert "Total (paid)" in text
    assert "https://pay.example.test/inv_1" not in text


def test_the_upcoming_invoice_renders_as_a_draft(as_owner, billed) -> None:  # type: ignore[no-untyped-def]
    now = timezone.now().replace(minute=0, second=0, microsecond=0)
    add_rollup(
        ApiKey.objects.get(organization=billed.organization, name="production"),
        now,
        model="llama-8b",
        prompt=10,
        cost="0.333333333333",
    )
    response = as_owner.get(f"{BASE}/invoices/upcoming/pdf/")
    assert response.status_code == 200
    assert response.content.startswith(b"%PDF-")
    month = timezone.now().strftime("%Y-%m")
    assert f'filename="invoice-acme-{month}-draft.pdf"' in response["Content-Disposition"]
    rows = _csv_rows(as_owner.get(f"{BASE}/invoices/upcoming/csv/").content)
    assert rows[0]["invoice"] == "DRAFT"
    assert rows[0]["amount"] == "0.333333333333"


def test_draft_document_is_marked_draft_and_renders_priced_lines(org, owner) -> None:  # type: ignore[no-untyped-def]
    """Lines metered with their prices (unit, quantity, unit price) print as quantity times
    unit price; a usage line without them prints its tokens."""
    start, end = START, START.replace(month=11)
    invoice = Invoice(
        organization=org,
        period=PERIOD,
        status=Invoice.Status.DRAFT,
        plan="standard",
        period_start=start,
        period_end=end,
        subtotal=Decimal("0.900000000000"),
        total=Decimal("0.90"),
        rounding=Decimal("0"),
    )
    lines = [
        InvoiceLine(
            position=1,
            kind="usage",
            description="llama-8b input tokens",
            model="llama-8b",
            unit="input_tokens",
            quantity=2_000_000,
            unit_price_per_mtok=Decimal("0.150000"),
            input_tokens=2_000_000,
            amount=Decimal("0.300000000000"),
        ),
        InvoiceLine(
            position=2,
            kind="usage",
            description="llama-8b output tokens",
            model="llama-8b",
            unit="output_tokens",
            quantity=1_000_000,
            unit_price_per_mtok=Decimal("0.600000"),
            output_tokens=1_000_000,
            amount=Decimal("0.600000000000"),
        ),
        InvoiceLine(
            position=3,
            kind="usage",
            description="old-model",
            model="old-model",
            input_tokens=5,
            output_tokens=7,
            amount=Decimal("0"),
        ),
    ]
    doc = draft_document(InvoiceDraft(invoice=invoice, lines=lines, adjustments=[]))
    text = _text(doc)
    assert "DRAFT" in text
    assert "DRAFT INVOICE" in text  # the title, upper-cased by the stylesheet
    assert "2,000,000 input tokens" in text
    assert "0.15 / 1M tokens" in text
    assert "1,000,000 output tokens" in text
    assert "5 input tokens" in text
    assert "7 output tokens" in text
    rows = _csv_rows(invoice_csv(doc).encode())
    assert [(r["unit"], r["quantity"], r["unit_price_per_mtok"]) for r in rows[:3]] == [
        ("input_tokens", "2000000", "0.150000"),
        ("output_tokens", "1000000", "0.600000"),
        ("", "", ""),
    ]


def test_rendering_fetches_nothing() -> None:
    fetcher = OfflineFetcher()
    html = (
        '<link rel="stylesheet" href="https://cdn.example.test/x.css">'
        '<img src="http://127.0.0.1:9/logo.png" alt="">'
        '<p style="font-family: Remote; background: url(file:///etc/passwd)">x</p>'
    )
    pdf = weasyprint.HTML(string=html, url_fetcher=fetcher).write_pdf()
    assert pdf.startswith(b"%PDF-")
    assert sorted(fetcher.refused) == [
        "file:///etc/passwd",
        "http://127.0.0.1:9/logo.png",
        "https://cdn.example.test/x.css",
    ]


def test_the_invoice_template_asks_for_no_resource(billed) -> None:  # type: ignore[no-untyped-def]
    fetcher = OfflineFetcher()
    billed.payment_url = "https://pay.example.test/x"  # a link, not a resource
    assert invoice_pdf(invoice_document(billed), fetcher=fetcher).startswith(b"%PDF-")
    assert fetcher.refused == []


# --- the invoice CSV ------------------------------------------------------------------------------
def test_invoice_csv_totals_equal_the_invoice_exactly(as_owner, billed) -> None:  # type: ignore[no-untyped-def]
    response = as_owner.get(f"{BASE}/invoices/{billed.number}/csv/")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    stem = f"invoice-acme-{billed.display_number}"
    assert response["Content-Disposition"] == f'attachment; filename="{stem}.csv"'
    rows = _csv_rows(response.content)
    lines = [row for row in rows if row["line"]]
    totals = {row["kind"]: row["amount"] for row in rows if not row["line"]}
    stored = list(billed.lines.order_by("position"))
    assert [row["description"] for row in lines] == [line.description for line in stored]
    assert [Decimal(row["amount"]) for row in lines] == [line.amount for line in stored]
    assert all(len(row["amount"].split(".")[1]) == 12 for row in lines)
    assert sum(Decimal(row["amount"]) for row in lines) == Decimal(totals["subtotal"])
    assert Decimal(totals["subtotal"]) == billed.subtotal
    assert Decimal(totals["rounding"]) == billed.rounding
    assert totals["total"] == f"{billed.total:f}"
    assert "tax" not in totals
    assert totals["total_due"] == totals["total"]
    credit = next(row for row in lines if row["kind"] == "credit")
    assert credit["amount"] == "-2.500000000000"  # a minus sign is not a formula


def test_invoice_csv_with_tax(as_owner, org, staff, settings) -> None:  # type: ignore[no-untyped-def]
    settings.VLINDERS_TAX_NAME = "VAT"
    settings.VLINDERS_TAX_RATE_PERCENT = "21"
    org.created_at = START
    org.save()
    make_month(org)
    billed = finalised_invoice(org, staff)
    # The tax is the invoice's own, stored when it was finalised: a later change of the
    # settings changes no finalised invoice.
    settings.VLINDERS_TAX_NAME = "GST"
    settings.VLINDERS_TAX_RATE_PERCENT = "10"
    rows = _csv_rows(as_owner.get(f"{BASE}/invoices/{billed.number}/csv/").content)
    totals = {row["kind"]: row for row in rows if not row["line"]}
    expected_tax = tax.tax_of(billed.total, Decimal(21))
    assert billed.tax == expected_tax
    assert totals["tax"]["description"] == "VAT 21%"
    assert Decimal(totals["tax"]["amount"]) == expected_tax
    assert Decimal(totals["total_due"]["amount"]) == billed.total + expected_tax
    text = _text(invoice_document(billed))
    assert "VAT 21%" in text
    assert f"{billed.total + expected_tax:,f}" in text


# --- the statement --------------------------------------------------------------------------------
def test_statement_csv_by_day_model_and_key_with_an_exact_total(as_owner, billed) -> None:  # type: ignore[no-untyped-def]
    response = as_owner.get(f"{BASE}/statements/{PERIOD}/csv/")
    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="statement-acme-2026-10.csv"'
    rows = _csv_rows(response.content)
    body, total = rows[:-1], rows[-1]
    # Hours of the same day, model and key are summed in one row.
    assert len(body) == len(ROLLUPS) - 1
    first = next(row for row in body if row["key"].startswith("production ("))
    assert (first["day"], first["model"], first["requests"]) == ("2026-10-01", "llama-8b", "5")
    assert first["key"].startswith("production (")
    assert (first["input_tokens"], first["output_tokens"], first["cached_tokens"]) == (
        "2000",
        "500",
        "100",
    )
    assert first["cost"] == "0.000600000001"
    # A key name a spreadsheet would run as a formula is neutralised.
    assert any(row["key"].startswith("'=cmd") for row in body)
    assert all(len(row["cost"].split(".")[1]) == 12 for row in rows)
    october = UsageRollup.objects.filter(
        organization=billed.organization, hour__gte=START, hour__lt=START.replace(month=11)
    ).aggregate(cost=Sum("cost"), requests=Sum("requests"), prompt=Sum("prompt_tokens"))
    assert total["day"] == "total"
    assert Decimal(total["cost"]) == october["cost"] == sum(Decimal(r["cost"]) for r in body)
    assert int(total["requests"]) == october["requests"]
    assert int(total["input_tokens"]) == october["prompt"]


def test_statement_pdf(as_owner, billed) -> None:  # type: ignore[no-untyped-def]
    response = as_owner.get(f"{BASE}/statements/{PERIOD}/pdf/")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    assert response.content.startswith(b"%PDF-")
    found = statements.statement(billed.organization, PERIOD)
    text = layout_text(render_document(STATEMENT_TEMPLATE, statement_context(found)))
    assert "USAGE STATEMENT" in text
    assert "2026-10" in text
    assert f"{found.total_cost:f}" in text
    assert "production (" in text


def test_statement_months_and_range(billed) -> None:  # type: ignore[no-untyped-def]
    org = billed.organization
    months = statements.statement_months(org)
    assert months[0] == timezone.now().strftime("%Y-%m")
    assert {"2026-09", "2026-10", "2026-11"} <= set(months)
    # September has usage though the organisation was created in October: in range.
    assert statements.first_month(org) == "2026-09"
    statements.check_month(org, "2026-09")
    with pytest.raises(statements.MonthOutOfRange):
        statements.check_month(org, "2026-08")


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("invoices/999999/pdf/", 404),
        ("invoices/999999/csv/", 404),
        ("invoices/99999999999999999999999/pdf/", 404),
        ("statements/2026-13/csv/", 400),
        ("statements/oct-2026/pdf/", 400),
        ("statements/2026-1/csv/", 400),
        ("statements/2099-01/csv/", 404),
        ("statements/2020-01/pdf/", 404),
    ],
)
def test_unknown_invoice_and_bad_months(as_owner, billed, path: str, status: int) -> None:  # type: ignore[no-untyped-def]
    response = as_owner.get(f"{BASE}/{path}", HTTP_ACCEPT="application/pdf")
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    if status == 400:
        assert "month" in response.json()


def test_another_organisations_invoice_is_404(as_owner, billed, staff) -> None:  # type: ignore[no-untyped-def]
    other = OrganizationFactory(slug="elsewhere", created_at=START)
    make_month(other)
    invoice = finalised_invoice(other, staff)
    assert as_owner.get(f"{BASE}/invoices/{invoice.number}/pdf/").status_code == 404
    assert as_owner.get(f"{BASE}/invoices/{invoice.number}/csv/").status_code == 404


@pytest.mark.parametrize(
    ("actor", "status"),
    [
        ("as_owner", 200),
        ("as_admin", 200),
        ("as_staff", 200),
        ("as_member", 403),
        ("as_viewer", 403),
        ("as_outsider", 404),
    ],
)
def test_role_matrix(request, billed, actor: str, status: int) -> None:  # type: ignore[no-untyped-def]
    client = request.getfixturevalue(actor)
    for path in (
        f"invoices/{billed.number}/pdf/",
        f"invoices/{billed.number}/csv/",
        "invoices/upcoming/csv/",
        f"statements/{PERIOD}/csv/",
        f"statements/{PERIOD}/pdf/",
    ):
        assert client.get(f"{BASE}/{path}").status_code == status, path


def test_anonymous_is_refused(anonymous, billed) -> None:  # type: ignore[no-untyped-def]
    for path in (f"invoices/{billed.number}/pdf/", f"statements/{PERIOD}/csv/"):
        assert anonymous.get(f"{BASE}/{path}").status_code in (401, 403)


def test_sample_documents_for_a_reviewer(billed, settings) -> None:  # type: ignore[no-untyped-def]
    """Writes a sample invoice (with a tax line, past due, with a pay link) and a statement to
    the test artifacts folder, next to the console screenshots."""
    settings.VLINDERS_TAX_NAME = "VAT"
    settings.VLINDERS_TAX_RATE_PERCENT = "21"
    settings.VLINDERS_SELLER_TAX_ID = "NL000099998B57"
    # Issued after the month's grace period, due two weeks later: past due now, so marked.
    billed.issued_at = dt.datetime(2026, 11, 1, 1, 15, tzinfo=dt.UTC)
    billed.due_at = billed.issued_at + dt.timedelta(days=14)
    billed.payment_url = "https://invoice.stripe.test/i/acct_demo/test_demo"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    invoice_file = ARTIFACTS / "invoice-sample.pdf"
    invoice_file.write_bytes(invoice_pdf(invoice_document(billed)))
    draft = draft_document(
        selectors.invoice_draft(organization=billed.organization, period="2026-11")
    )
    (ARTIFACTS / "invoice-draft-sample.pdf").write_bytes(invoice_pdf(draft))
    statement_file = ARTIFACTS / "statement-sample.pdf"
    statement_file.write_bytes(statement_pdf(statements.statement(billed.organization, PERIOD)))
    assert invoice_file.read_bytes().startswith(b"%PDF-")
    assert statement_file.read_bytes().startswith(b"%PDF-")
