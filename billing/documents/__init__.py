"""Billing documents a tenant downloads: an invoice (finalised or the upcoming draft) as PDF and
CSV, and the monthly usage statement as CSV and PDF (docs/billing.md, "Documents").

One module per concern: ``invoice_data`` gathers what an invoice document shows (seller, buyer,
lines, totals, tax, status), ``invoice_pdf``/``invoice_csv`` and ``statement`` write it,
``render`` turns HTML templates into PDF without fetching anything, ``responses`` wraps the bytes
in a download. The API (``billing.api.document_views``) and the console's billing page call the
same functions.
"""
