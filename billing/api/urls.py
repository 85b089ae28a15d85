"""URLs of the usage API, under an organisation like the tenants API (``tenants.api.urls.ORG``)."""

from django.urls import re_path

from billing.api.document_views import DocumentViewSet
from billing.api.invoice_views import InvoiceViewSet
from billing.api.prepaid_views import PrepaidViewSet
from billing.api.report_views import MarginReportView, RevenueReportView
from billing.api.topup_views import TopUpViewSet
from billing.api.views import UsageViewSet
from tenants.api.urls import ORG

urlpatterns = [
    re_path(rf"^{ORG}/usage/$", UsageViewSet.as_view({"get": "report"}), name="usage"),
    re_path(rf"^{ORG}/usage\.csv$", UsageViewSet.as_view({"get": "export"}), name="usage-csv"),
    re_path(rf"^{ORG}/invoices/$", InvoiceViewSet.as_view({"get": "list"}), name="invoice-list"),
    re_path(
        rf"^{ORG}/invoices/upcoming/$",
        InvoiceViewSet.as_view({"get": "upcoming"}),
        name="invoice-upcoming",
    ),
    re_path(
        rf"^{ORG}/invoices/(?P<number>[0-9]+)/$",
        InvoiceViewSet.as_view({"get": "retrieve"}),
        name="invoice-detail",
    ),
    # Top-ups of prepaid organisations (Stripe Checkout).
    re_path(
        rf"^{ORG}/topups/$",
        TopUpViewSet.as_view({"get": "list", "post": "create"}),
        name="topup-list",
    ),
    # --- Billing documents (docs/billing.md, "Documents") ---
    re_path(
        rf"^{ORG}/invoices/(?P<number>[0-9]+|upcoming)/pdf/$",
        DocumentViewSet.as_view({"get": "invoice_pdf"}),
        name="invoice-pdf",
    ),
    re_path(
        rf"^{ORG}/invoices/(?P<number>[0-9]+|upcoming)/csv/$",
        DocumentViewSet.as_view({"get": "invoice_csv"}),
        name="invoice-csv",
    ),
    re_path(
        rf"^{ORG}/statements/(?P<month>[^/]+)/csv/$",
        DocumentViewSet.as_view({"get": "statement_csv"}),
        name="statement-csv",
    ),
    re_path(
        rf"^{ORG}/statements/(?P<month>[^/]+)/pdf/$",
        DocumentViewSet.as_view({"get": "statement_pdf"}),
        name="statement-pdf",
    ),
    # --- end of Billing documents ---
    # --- Prepaid balance (docs/billing.md, "Prepaid") ---
    re_path(rf"^{ORG}/balance/$", PrepaidViewSet.as_view({"get": "balance"}), name="balance"),
    re_path(rf"^{ORG}/ledger/$", PrepaidViewSet.as_view({"get": "ledger"}), name="ledger"),
    # --- end of Prepaid balance ---
    # --- Operator reports, staff only (docs/billing.md, "Operator reports") ---
    re_path(r"^staff/reports/revenue/$", RevenueReportView.as_view(), name="staff-report-revenue"),
    re_path(r"^staff/reports/margin/$", MarginReportView.as_view(), name="staff-report-margin"),
    # --- end of Operator reports ---
]
