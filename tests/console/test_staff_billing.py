"""Staff billing pages (``console.pages.staff_billing``) and the staff report API
(``billing.api.report_views``): staff only; the tables' figures are the report's; each CSV holds
exactly the rows of its table; bad months are 400s."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html import unescape

import pytest
from django.test import Client

from billing import reports
from billing.models import Invoice, UsageRollup
from inference.models import ReplicaHours
from tests.billing.report_support import END, MONTH, START, finalised_invoice, random_rollups
from tests.factories import CatalogModelFactory, OrganizationFactory

pytestmark = pytest.mark.django_db

REVENUE = "/staff/revenue/"
INVOICES = "/staff/invoices/"
API_REVENUE = "/api/v1/staff/reports/revenue/"
API_MARGIN = "/api/v1/staff/reports/margin/"


@pytest.fixture
def staff_client(staff) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(staff)
    return client


@pytest.fixture
def march(db):  # type: ignore[no-untyped-def]
    """Random usage of March 2026 over four organisations, a costed catalog model with
    replica-hours, and invoices: one open and due, one past due."""
    orgs = [
        OrganizationFactory(slug=f"org-{i}", name=f"Org {i}", plan="free", created_at=START)
        for i in range(4)
    ]
    orgs.append(OrganizationFactory(slug="formula", name="=HYPERLINK(1)", created_at=START))
    expected = random_rollups(orgs, per_org=40)
    model = CatalogModelFactory(name="llama-8b", cost_per_replica_hour=Decimal("1.75"))
    ReplicaHours.objects.create(catalog_model=model, hour=START, replica_seconds=5000.4)
    now = datetime.now(UTC)
    finalised_invoice(
        orgs[0],
        number=1,
        lines=[("usage", "1.234"), ("base_fee", "10")],
        issued_at=now - timedelta(days=5),
        due_at=now + timedelta(days=9),
    )
    finalised_invoice(
        orgs[1],
        number=2,
        status=Invoice.Status.PAST_DUE,
        lines=[("usage", "2.5")],
        issued_at=now - timedelta(days=30),
        due_at=now - timedelta(days=16),
    )
    return expected


def _table(html: str, table_id: str) -> list[list[str]]:
    """The body rows of the table ``table_id`` as the page shows them (text of each cell)."""
    match = re.search(rf'<table id="{table_id}">(.*?)</table>', html, re.S)
    assert match, f"no table {table_id}"
    body = re.search(r"<tbody>(.*?)</tbody>", match.group(1), re.S)
    assert body
    rows = []
    for row in re.findall(r"<tr>(.*?)</tr>", body.group(1), re.S):
        cells = re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)
        rows.append([unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in cells])
    return rows


def _csv(response) -> list[list[str]]:  # type: ignore[no-untyped-def]
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    return list(csv.reader(io.StringIO(response.content.decode())))


# --- who may see them ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        REVENUE,
        f"{REVENUE}?month={MONTH}",
        f"{REVENUE}organizations.csv",
        f"{REVENUE}models.csv",
        f"{REVENUE}days.csv",
        INVOICES,
        "/staff/invoices.csv",
    ],
)
def test_only_staff_see_the_pages(url, role_client) -> None:  # type: ignore[no-untyped-def]
    assert role_client("staff").get(url).status_code == 200
    for role in ("owner", "admin", "viewer", "outsider"):
        assert role_client(role).get(url).status_code == 404, role
    anonymous = role_client("anonymous").get(url)
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith("/login/")


def test_an_inactive_staff_account_is_refused(staff) -> None:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(staff)
    staff.is_active = False
    staff.save()
    assert client.get(REVENUE).status_code in (302, 404)


@pytest.mark.parametrize("url", [API_REVENUE, API_MARGIN])
def test_only_staff_use_the_api(url, as_staff, as_owner, as_outsider, anonymous) -> None:  # type: ignore[no-untyped-def]
    assert as_staff.get(url).status_code == 200
    assert as_owner.get(url).status_code == 403
    assert as_outsider.get(url).status_code == 403
    assert anonymous.get(url).status_code in (401, 403)


def test_the_nav_links_staff_to_the_reports(staff_client, as_owner) -> None:  # type: ignore[no-untyped-def]
    page = staff_client.get(REVENUE).content.decode()
    assert 'href="/staff/revenue/"' in page
    assert 'href="/staff/invoices/"' in page


# --- the revenue page ---------------------------------------------------------------------------
def test_the_tables_show_the_reports_figures_and_the_csvs_equal_them(staff_client, march) -> None:  # type: ignore[no-untyped-def]
    response = staff_client.get(REVENUE, {"month": MONTH})
    assert response.status_code == 200
    html = response.content.decode()
    assert "2026-03" in html
    assert "month to date" not in html  # a closed month

    period = reports.month_period(MONTH)
    for name in ("organizations", "models", "days"):
        shown = _table(html, f"{name}-table")
        exported = _csv(staff_client.get(f"{REVENUE}{name}.csv", {"month": MONTH}))
        # The CSV is the table: same header, same rows, same cells (a formula-like name is
        # quoted in the CSV, which is the only difference allowed).
        assert exported[1:] == [
            [c if not c.startswith("=") else "'" + c for c in row] for row in shown
        ]
        assert (
            len(shown)
            == {
                "organizations": len(march["org"]),
                "models": len(march["model"]),
                "days": 31,
            }[name]
        )
        assert f'href="/staff/revenue/{name}.csv?month={MONTH}"' in html

    orgs = _table(html, "organizations-table")
    revenue = {row[1]: Decimal(row[6]) for row in orgs}  # slug -> usage revenue
    by_slug = {row.slug: row.revenue for row in reports.revenue_by_organization(period)}
    assert revenue == by_slug
    assert sum(revenue.values()) == sum(s["cost"] for s in march["org"].values())

    models = {row[0]: row for row in _table(html, "models-table")}
    llama = models["llama-8b"]
    assert llama[6] == "1.389"  # 5000 replica-seconds
    assert llama[7] == "1.750000"
    assert Decimal(llama[8]) == Decimal("2.430555555556")  # 5000 x 1.75 / 3600
    assert Decimal(llama[10]) == march["model"]["llama-8b"]["cost"] - Decimal("2.430555555556")
    assert models["qwen-0.5b"][8] == ""  # not in the catalog: cost unknown

    days = _table(html, "days-table")
    assert days[0][0] == "2026-03-01"
    assert [Decimal(row[4]) for row in days] == [
        march["day"].get((START + timedelta(days=i)).date(), {"cost": Decimal(0)})["cost"]
        for i in range(31)
    ]


def test_the_current_month_is_month_to_date(staff_client) -> None:  # type: ignore[no-untyped-def]
    html = staff_client.get(REVENUE).content.decode()
    assert reports.month_period().month in html
    assert "month to date" in html


@pytest.mark.parametrize("month", ["2026-13", "march", "2999-01"])
def test_a_bad_month_is_a_400_that_says_so(staff_client, month) -> None:  # type: ignore[no-untyped-def]
    response = staff_client.get(REVENUE, {"month": month})
    assert response.status_code == 400
    assert "month" in response.content.decode()
    assert staff_client.get(f"{REVENUE}days.csv", {"month": month}).status_code == 400


def test_an_unknown_table_is_404(staff_client) -> None:  # type: ignore[no-untyped-def]
    assert staff_client.get(f"{REVENUE}secrets.csv").status_code == 404


# --- the invoices page --------------------------------------------------------------------------
def test_outstanding_and_past_due_invoices_link_to_the_admin(staff_client, march) -> None:  # type: ignore[no-untyped-def]
    html = staff_client.get(INVOICES).content.decode()
    late = _table(html, "past-due-table")
    waiting = _table(html, "open-table")
    assert [row[0] for row in late] == ["VL-00000002"]
    assert late[0][8] == "yes"
    assert late[0][7] == "16"  # days overdue
    assert [row[0] for row in waiting] == ["VL-00000001"]
    assert waiting[0][9] == "11.23"
    invoice = Invoice.objects.get(number=2)
    assert f'href="/admin/billing/invoice/{invoice.pk}/change/"' in html
    exported = _csv(staff_client.get("/staff/invoices.csv"))
    assert sorted(exported[1:]) == sorted(late + waiting)


# --- the API ------------------------------------------------------------------------------------
def test_the_revenue_api_matches_the_report(as_staff, march) -> None:  # type: ignore[no-untyped-def]
    response = as_staff.get(API_REVENUE, {"month": MONTH})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["period"]["month"] == MONTH
    assert body["period"]["month_to_date"] is False
    total = sum(s["cost"] for s in march["org"].values())
    assert Decimal(body["totals"]["usage_revenue"]) == total
    assert sum(Decimal(o["usage_revenue"]) for o in body["organizations"]) == total
    assert sum(Decimal(m["usage_revenue"]) for m in body["models"]) == total
    assert sum(Decimal(d["usage_revenue"]) for d in body["days"]) == total
    assert len(body["days"]) == 31
    assert body["totals"]["invoices"] == 2
    assert body["totals"]["invoiced"] == "13.73"  # 11.234 -> 11.23 and 2.50
    first = next(o for o in body["organizations"] if o["slug"] == "org-0")
    assert (first["invoice_number"], first["invoice_status"], first["base_fee"]) == (
        1,
        "open",
        "10.000000000000",
    )


def test_the_margin_api(as_staff, march) -> None:  # type: ignore[no-untyped-def]
    body = as_staff.get(API_MARGIN, {"month": MONTH}).json()
    llama = next(m for m in body["models"] if m["model"] == "llama-8b")
    assert llama["replica_seconds"] == 5000
    assert llama["cost"] == "2.430555555556"
    assert llama["cost_per_replica_hour"] == "1.750000"
    tokens = llama["prompt_tokens"] + llama["completion_tokens"]
    assert llama["tokens"] == tokens
    expected_per_mtok = (Decimal("2.430555555556") * 1_000_000 / tokens).quantize(
        Decimal("0.000001")
    )
    assert Decimal(llama["cost_per_mtok"]) == expected_per_mtok
    other = next(m for m in body["models"] if m["model"] == "qwen-0.5b")
    assert (other["cost"], other["margin"], other["margin_percent"]) == (None, None, None)
    assert body["totals"]["cost_known"] is False


def test_a_blank_month_is_the_current_one(as_staff) -> None:  # type: ignore[no-untyped-def]
    body = as_staff.get(API_REVENUE, {"month": ""}).json()
    assert body["period"]["month"] == reports.month_period().month
    assert body["period"]["month_to_date"] is True


@pytest.mark.parametrize("month", ["2026-13", "03-2026", "2999-01", "2026-1"])
def test_the_api_refuses_a_bad_month_with_a_400(as_staff, month) -> None:  # type: ignore[no-untyped-def]
    response = as_staff.get(API_REVENUE, {"month": month})
    assert response.status_code == 400
    assert "month" in response.json()


def test_late_rows_outside_the_month_are_not_counted(as_staff) -> None:  # type: ignore[no-untyped-def]
    org = OrganizationFactory(created_at=START)
    from tests.billing.usage_data import make_key

    key = make_key(org)
    for hour in (START - timedelta(seconds=1), END):
        UsageRollup.objects.create(
            organization=org, api_key=key, hour=hour, model="m", cost=Decimal("1")
        )
    body = as_staff.get(API_REVENUE, {"month": MONTH}).json()
    assert body["totals"]["usage_revenue"] == "0.000000000000"


def test_the_page_reads_the_months_rollups_once(staff_client, march) -> None:  # type: ignore[no-untyped-def]
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        assert staff_client.get(REVENUE, {"month": MONTH}).status_code == 200
    scans = [q["sql"] for q in queries if "billing_usagerollup" in q["sql"]]
    assert len(scans) == 1
    assert "GROUPING SETS" in scans[0]


def test_with_nothing_outstanding_the_invoice_tables_say_so(staff_client) -> None:  # type: ignore[no-untyped-def]
    page = staff_client.get(INVOICES).content.decode()
    assert page.count("No invoices.") == 2  # past due, and open not yet due
    assert "Nothing in this period." not in page
