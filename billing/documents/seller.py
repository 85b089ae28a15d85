"""Who issues the documents: the seller block of an invoice and a statement, from settings
(``VLINDERS_SELLER_NAME``, ``_ADDRESS``, ``_EMAIL``, ``_TAX_ID``)."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings


@dataclass(frozen=True, slots=True)
class Seller:
    name: str
    address_lines: list[str]
    email: str
    tax_id: str


def seller() -> Seller:
    """The seller as configured. The address is multi-line: real newlines or the two characters
    ``\\n`` (what fits in an environment variable) separate its lines; empty lines are dropped."""
    address = str(settings.VLINDERS_SELLER_ADDRESS).replace("\\n", "\n")
    return Seller(
        name=str(settings.VLINDERS_SELLER_NAME),
        address_lines=[line.strip() for line in address.splitlines() if line.strip()],
        email=str(settings.VLINDERS_SELLER_EMAIL),
        tax_id=str(settings.VLINDERS_SELLER_TAX_ID),
    )
