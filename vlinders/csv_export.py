"""What the API's CSV exports share: JSON for every answer and error, a writer target for
streaming, and cells a spreadsheet cannot run as formulas. Used by the usage and audit exports."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import BaseParser
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request

# A cell starting with one of these is run as a formula by spreadsheets (CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class JSONAlways(BaseContentNegotiation):
    """JSON for every answer and error, whatever ``Accept`` says: a CSV export streams its own
    response, and a client asking for ``text/csv`` still gets its 400 as readable JSON rather
    than a 406."""

    def select_parser(self, request: Request, parsers: Iterable[BaseParser]) -> BaseParser | None:
        return next(iter(parsers), None)

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        renderer = next(iter(renderers))
        return renderer, renderer.media_type


class Echo:
    """A file-like object whose ``write`` returns the line, for streaming csv.writer output."""

    def write(self, value: str) -> str:
        return value


def cell(value: Any) -> Any:
    """One CSV cell: money as a plain decimal string; text that a spreadsheet would run as a
    formula is prefixed with ``'`` (names are user input)."""
    if isinstance(value, Decimal):
        return f"{value:f}"
    if isinstance(value, str) and value[:1] in _FORMULA_STARTS:
        return "'" + value
    return value
