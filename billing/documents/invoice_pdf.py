"""An invoice (finalised or the draft) as a PDF a company would send: rendered from
``billing/documents/invoice.html`` with ``documents.css``, offline (``render``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from billing.documents.invoice_data import InvoiceDocument

if TYPE_CHECKING:
    from billing.documents.render import OfflineFetcher

TEMPLATE = "billing/documents/invoice.html"


def invoice_pdf(doc: InvoiceDocument, *, fetcher: OfflineFetcher | None = None) -> bytes:
    # WeasyPrint (Pango) loads on the first PDF, not with the URLs: billing/documents/render.py.
    from billing.documents.render import render_pdf

    return render_pdf(TEMPLATE, {"doc": doc}, fetcher=fetcher)
