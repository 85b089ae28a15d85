"""HTML templates to PDF with WeasyPrint, offline.

Nothing is fetched while rendering: the stylesheet is part of the HTML (the template includes
``billing/documents/documents.css``), fonts come from the system through fontconfig and Pango,
and the URL fetcher refuses every URL except inline ``data:`` ones, so a document can neither
leak that it was opened nor hang on the network (a name or description a tenant typed that
looks like a URL stays text). Refused URLs are logged by WeasyPrint and left out.

Only the PDF functions import this module, when they are called: importing WeasyPrint loads Pango
and parses its stylesheets, and a machine without Pango must still serve every other page.
"""

from __future__ import annotations

from typing import Any

import weasyprint
from django.template.loader import render_to_string
from weasyprint.urls import URLFetcher, URLFetcherResponse


class OfflineFetcher(URLFetcher):
    """Refuses every URL but ``data:``; remembers what it refused (for tests and logs)."""

    def __init__(self) -> None:
        super().__init__(allowed_protocols=("data",), allow_redirects=False)
        self.refused: list[str] = []

    def fetch(self, url: str, headers: Any = None) -> URLFetcherResponse:
        if not url.startswith("data:"):
            self.refused.append(url)
            raise ValueError(f"documents are rendered offline; refused to fetch {url}")
        return super().fetch(url, headers)


def render_document(
    template: str, context: dict[str, Any], *, fetcher: OfflineFetcher | None = None
) -> weasyprint.Document:
    """Lay out ``template`` rendered with ``context`` as print pages (A4, set by the CSS)."""
    html = render_to_string(template, context)
    return weasyprint.HTML(string=html, url_fetcher=fetcher or OfflineFetcher()).render()


def render_pdf(
    template: str, context: dict[str, Any], *, fetcher: OfflineFetcher | None = None
) -> bytes:
    pdf: bytes = render_document(template, context, fetcher=fetcher).write_pdf()
    return pdf
