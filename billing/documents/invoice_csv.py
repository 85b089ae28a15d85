"""An invoice as CSV: one row per line with the document's columns, then the totals rows.

Decimals are exact strings with a fixed number of places (amounts 12, unit prices 6, totals and
tax 2), never rounded for display: the ``total`` row equals the invoice's total exactly and the
``subtotal`` row the exact sum of the line rows. Text a spreadsheet would run as a formula is
neutralised (``vlinders.csv_export.cell``); numbers are written as they are, a minus sign included.
"""

from __future__ import annotations

import csv
import io
from decimal import Decimal

from billing.documents import formatting as fmt
from billing.documents.invoice_data import InvoiceDocument
from vlinders.csv_export import cell

HEADER = [
    "invoice",
    "period",
    "line",
    "kind",
    "description",
    "model",
    "unit",
    "quantity",
    "unit_price_per_mtok",
    "requests",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "amount",
    "currency",
]
AMOUNT_PLACES = 12
PRICE_PLACES = 6
CENT_PLACES = 2


def invoice_csv(doc: InvoiceDocument) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(HEADER)
    number, period, currency = doc.number, doc.period, doc.currency

    def total_row(kind: str, description: str, amount: Decimal, places: int) -> list[str]:
        blank = [""] * 8  # model … cached_tokens
        return [number, period, "", kind, description, *blank, fmt.plain(amount, places), currency]

    for line in doc.lines:
        price = line.unit_price_per_mtok
        writer.writerow(
            [
                number,
                period,
                line.position,
                line.kind,
                cell(line.description),
                cell(line.model),
                line.unit,
                line.quantity if line.unit else "",
                fmt.plain(price, PRICE_PLACES) if price is not None else "",
                line.requests,
                line.input_tokens,
                line.output_tokens,
                line.cached_tokens,
                fmt.plain(line.amount, AMOUNT_PLACES),
                currency,
            ]
        )
    writer.writerow(total_row("subtotal", "Subtotal (exact)", doc.subtotal, AMOUNT_PLACES))
    writer.writerow(total_row("rounding", "Rounding to cents", doc.rounding, AMOUNT_PLACES))
    writer.writerow(total_row("total", "Total", doc.total, CENT_PLACES))
    if doc.tax_rate_percent is not None:
        label = f"{doc.tax_name} {doc.tax_rate_label}%"
        writer.writerow(total_row("tax", label, doc.tax, CENT_PLACES))
    writer.writerow(total_row("total_due", "Total due", doc.total_due, CENT_PLACES))
    return out.getvalue()
