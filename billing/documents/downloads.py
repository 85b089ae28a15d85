"""The four downloads, from an organisation and what the URL names, shared by the API and the
console so both answer the same bytes and the same errors:

- ``Http404`` for an invoice number the organisation does not have, and for a month outside its
  life (``billing.statements.MonthOutOfRange``);
- ``ValueError`` for a malformed month (the caller answers 400 in its own format).
"""

from __future__ import annotations

from django.http import Http404, HttpResponse

from billing import selectors, statements
from billing.documents import responses
from billing.documents.invoice_csv import invoice_csv
from billing.documents.invoice_data import InvoiceDocument, draft_document, invoice_document
from billing.documents.invoice_pdf import invoice_pdf
from billing.documents.statement import filename_stem, statement_csv, statement_pdf
from tenants.models import Organization


def invoice_doc(organization: Organization, number: str) -> InvoiceDocument:
    """The document of the organisation's finalised invoice ``number`` (digits; ``upcoming``
    for the current month's draft)."""
    if number == "upcoming":
        return draft_document(selectors.upcoming_invoice(organization=organization))
    if not number.isdigit() or len(number) > 18:  # beyond a bigint: no such invoice
        raise Http404
    invoice = (
        selectors.invoices_of(organization)
        .select_related("organization")
        .filter(number=int(number))
        .first()
    )
    if invoice is None:
        raise Http404
    return invoice_document(invoice)


def invoice_download(organization: Organization, number: str, kind: str) -> HttpResponse:
    doc = invoice_doc(organization, number)
    if kind == "pdf":
        return responses.pdf(invoice_pdf(doc), doc.filename_stem)
    return responses.csv(invoice_csv(doc), doc.filename_stem)


def statement_download(organization: Organization, month: str, kind: str) -> HttpResponse:
    try:
        found = statements.statement(organization, month)
    except statements.MonthOutOfRange as exc:
        raise Http404 from exc
    if kind == "pdf":
        return responses.pdf(statement_pdf(found), filename_stem(found))
    return responses.csv(statement_csv(found), filename_stem(found))
