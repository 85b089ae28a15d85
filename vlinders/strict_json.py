"""JSON bodies of the management API are taken with the types the schema states.

DRF coerces: a ``CharField`` takes ``0`` as ``"0"``, an ``IntegerField`` takes ``"5"`` and
``5.0``, a ``BooleanField`` takes ``"yes"`` and ``1``, a ``DecimalField`` takes ``2.5``. The
OpenAPI schema (and so every generated client) says ``string``, ``integer``, ``boolean`` and, for
money, a decimal *string*; a body that breaks that is a client bug, and accepting it means the
API does not do what its schema says. ``StrictJSONTypes`` refuses such a body with a 400 naming
each field, before DRF's own validation; query parameters (always text) are not checked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from django.http import QueryDict
from rest_framework import fields, relations, serializers

# Field class -> the JSON types its value may have (``null`` is DRF's business: ``allow_null``).
# The first match in this order wins, so subclasses come before their bases.
_JSON_TYPES: list[tuple[type[Any], tuple[type, ...], str]] = [
    (fields.BooleanField, (bool,), "Must be a boolean (true or false)."),
    (fields.IntegerField, (int,), "Must be a whole number."),
    (fields.FloatField, (int, float), "Must be a number."),
    (fields.DecimalField, (str,), 'Must be a decimal number written as a string, e.g. "12.50".'),
    (fields.ChoiceField, (str,), "Must be a string."),
    (fields.CharField, (str,), "Must be a string."),
    (fields.DateTimeField, (str,), "Must be a string."),
    (fields.DateField, (str,), "Must be a string."),
    (relations.SlugRelatedField, (str,), "Must be a string."),
]


def decimal_pattern(field: fields.DecimalField) -> str:
    """The exact form of a decimal string ``field`` takes: at most its whole and fractional
    digits, a sign only if it may be negative. The schema states it; ``StrictJSONTypes``
    enforces it (DRF alone also takes ``" 1"``, ``"1e3"`` and ``"1."``)."""
    places = field.decimal_places or 0
    whole = (field.max_digits or 64) - places
    sign = "" if field.min_value is not None and field.min_value >= 0 else "-?"
    fraction = rf"(\.[0-9]{{1,{places}}})?" if places else ""
    return rf"^{sign}[0-9]{{1,{max(whole, 1)}}}{fraction}$"


def _type_error(field: Any, value: Any) -> Any:
    """The message(s) for ``value`` given to ``field``, or ``None`` when its JSON type fits."""
    if value is None:
        return None
    if isinstance(field, fields.ListField | relations.ManyRelatedField):
        if not isinstance(value, list):
            return None  # DRF's own message ("Expected a list of items...")
        child = field.child if isinstance(field, fields.ListField) else field.child_relation
        errors = {i: e for i, item in enumerate(value) if (e := _type_error(child, item))}
        return errors or None
    for field_class, json_types, message in _JSON_TYPES:
        if isinstance(field, field_class):
            # bool is an int in Python, never in JSON.
            wrong_bool = isinstance(value, bool) and bool not in json_types
            if wrong_bool or not isinstance(value, json_types):
                return [message]
            if isinstance(field, fields.DecimalField) and not re.fullmatch(
                decimal_pattern(field), str(value)
            ):
                return [f"Must be a decimal string matching {decimal_pattern(field)}."]
            return None
    return None


class StrictJSONTypes:
    """Mixin for the API's serializers (put it first among the bases): refuses a JSON body whose
    values have the wrong JSON type for their fields (module docstring)."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping) and not isinstance(data, QueryDict):
            writable = {
                name: field
                for name, field in self.fields.items()  # type: ignore[attr-defined]
                if not field.read_only
            }
            errors = {
                name: error
                for name, field in writable.items()
                if field.source != "*"
                and name in data
                and (error := _type_error(field, data[name])) is not None
            }
            if errors:
                raise serializers.ValidationError(errors)
        return super().to_internal_value(data)  # type: ignore[misc]
