"""An invoice (finalised or the draft) as a PDF a company would send: rendered from
``billing/documents/invoice.html`` with ``documents.css``, offline (``render``)."""

from __future__ import annotations

from billing.documents.invoice_data import InvoiceDocument
from billing.documents.render import OfflineFetcher, render_pdf

TEMPLATE = "billing/documents/invoice.html"


def invoice_pdf(doc: InvoiceDocument, *, fetcher: OfflineFetcher | None = None) -> bytes:
    return render_pdf(TEMPLATE, {"doc": doc}, fetcher=fetcher)
