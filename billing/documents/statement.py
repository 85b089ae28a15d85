"""The monthly usage statement (``billing.statements.statement``) as CSV and PDF.

CSV columns: day, model, key (name and prefix), key id, requests, input, output and cached
tokens, cost with exactly 12 decimal places; then one ``total`` row whose figures are the sums
of the rows (the cost exact, never rounded).
"""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from billing.documents import formatting as fmt
from billing.documents.seller import seller
from billing.statements import Statement
from vlinders.csv_export import cell

if TYPE_CHECKING:
    from billing.documents.render import OfflineFetcher

TEMPLATE = "billing/documents/statement.html"
HEADER = [
    "day",
    "model",
    "key",
    "key_id",
    "requests",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cost",
]
COST_PLACES = 12


def filename_stem(statement: Statement) -> str:
    return f"statement-{statement.organization.slug}-{statement.month}"


def statement_csv(statement: Statement) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(HEADER)
    for row in statement.rows:
        writer.writerow(
            [
                row.day.isoformat(),
                cell(row.model),
                cell(row.key_label),
                str(row.api_key_id),
                row.requests,
                row.input_tokens,
                row.output_tokens,
                row.cached_tokens,
                fmt.plain(row.cost, COST_PLACES),
            ]
        )
    writer.writerow(
        [
            "total",
            "",
            "",
            "",
            statement.total_requests,
            statement.total_input_tokens,
            statement.total_output_tokens,
            statement.total_cached_tokens,
            fmt.plain(statement.total_cost, COST_PLACES),
        ]
    )
    return out.getvalue()


def statement_context(statement: Statement) -> dict[str, Any]:
    """What ``statement.html`` is rendered with."""
    return {
        "statement": statement,
        "seller": seller(),
        "rows": [
            {
                "row": row,
                "cost": fmt.plain(row.cost, COST_PLACES),
            }
            for row in statement.rows
        ],
        "total_cost": fmt.plain(statement.total_cost, COST_PLACES),
        "first_day": statement.start.date(),
        "last_day": (statement.end - timedelta(microseconds=1)).date(),
    }


def statement_pdf(statement: Statement, *, fetcher: OfflineFetcher | None = None) -> bytes:
    # WeasyPrint (Pango) loads on the first PDF, not with the URLs: billing/documents/render.py.
    from billing.documents.render import render_pdf

    return render_pdf(TEMPLATE, statement_context(statement), fetcher=fetcher)
