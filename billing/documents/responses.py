"""Documents as downloads: the bytes with their media type and a ``Content-Disposition`` file
name, never cached by a shared cache (they are an organisation's private figures)."""

from __future__ import annotations

from django.http import HttpResponse

PDF = "application/pdf"
CSV = "text/csv; charset=utf-8"


def download(content: bytes | str, *, content_type: str, filename: str) -> HttpResponse:
    response = HttpResponse(content, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "private, no-store"
    return response


def pdf(content: bytes, stem: str) -> HttpResponse:
    return download(content, content_type=PDF, filename=f"{stem}.pdf")


def csv(content: str, stem: str) -> HttpResponse:
    return download(content, content_type=CSV, filename=f"{stem}.csv")
