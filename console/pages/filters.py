"""What the Usage, Requests and Audit log pages share: their date fields, the rule for the dates
they accept, the query strings their links carry, and the size of their pages.

Contract:

* Dates are UTC days from ``EARLIEST`` to ``LATEST`` (a date input's ``min`` and ``max``, and
  no arithmetic past the calendar). ``check_dates`` adds a form error to ``from`` or ``to`` for a
  day outside them and to ``to`` for a range that ends before it starts; it raises nothing.
* ``DatedFilterForm``: a filter form with an optional ``from`` and ``to`` (``to`` included),
  checked with ``check_dates``; a subclass declares its own fields, which come first.
  ``date_params`` gives the days as the page's links repeat them, ``span`` as the selectors take
  them (the midnight of ``from`` to the midnight after ``to``, exclusive; ``None`` if unset).
* ``query_string`` leaves out what is unset; ``invalid_status`` is the status of a page whose
  filters are invalid (400, or 200 for htmx, which swaps in no 4xx answer).
* ``PAGE_SIZE``: the rows of one page of a list.

No database access and no state: only forms and small functions of their inputs.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.http import HttpRequest, QueryDict
from django.utils import timezone

PAGE_SIZE = 50
# The dates the forms accept (a date input's min/max, and no arithmetic past the calendar).
EARLIEST, LATEST = date(2000, 1, 1), date(2100, 12, 31)


def date_field(label: str, *, required: bool = True, help_text: str = "") -> forms.DateField:
    """A date input limited to ``EARLIEST``..``LATEST``."""
    return forms.DateField(
        label=label,
        required=required,
        help_text=help_text,
        widget=forms.DateInput(
            attrs={"type": "date", "min": EARLIEST.isoformat(), "max": LATEST.isoformat()},
            format="%Y-%m-%d",
        ),
    )


def check_dates(form: forms.Form, first: date | None, last: date | None) -> None:
    """Add ``form``'s errors for days out of bounds or a range that ends before it starts."""
    for name, value in (("from", first), ("to", last)):
        if value is not None and not EARLIEST <= value <= LATEST:
            form.add_error(name, f"Choose a date from {EARLIEST} to {LATEST}.")
    if first is not None and last is not None and last < first:
        form.add_error("to", "Must be on or after the start date.")


def utc_today() -> date:
    return timezone.now().astimezone(UTC).date()


def utc_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def invalid_status(request: HttpRequest) -> int:
    """400 for a page with bad filters; 200 for htmx, which swaps no 4xx answer in (the
    partial then shows the errors where the results were)."""
    return 200 if getattr(request, "htmx", False) else 400


def query_string(values: dict[str, Any]) -> str:
    """``a=1&b=2`` of the values that are set (the page's links keep its filters)."""
    return urlencode({name: value for name, value in values.items() if value not in ("", None)})


class DatedFilterForm(forms.Form):
    """A filter form whose fields end with an optional range of UTC days, ``from`` to ``to``
    (included). ``from_help``: the help text under ``from``."""

    def __init__(self, data: QueryDict, *, from_help: str = "") -> None:
        super().__init__(data)
        self.fields["from"] = date_field("From (UTC)", required=False, help_text=from_help)
        self.fields["to"] = date_field("To (UTC, included)", required=False)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        check_dates(self, data.get("from"), data.get("to"))
        return data

    def date_params(self) -> dict[str, str]:
        """The days as the page's links repeat them (ISO 8601; ``""`` where not set)."""
        data = self.cleaned_data
        return {
            "from": data["from"].isoformat() if data["from"] else "",
            "to": data["to"].isoformat() if data["to"] else "",
        }

    def span(self) -> tuple[datetime | None, datetime | None]:
        """The days as the selectors take them: the midnight of ``from`` and the midnight after
        ``to`` (exclusive), ``None`` where not set."""
        data = self.cleaned_data
        first, last = data["from"], data["to"]
        return (
            utc_midnight(first) if first else None,
            utc_midnight(last + timedelta(days=1)) if last else None,
        )
