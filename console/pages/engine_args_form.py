"""A Django form generated from an engine kind's JSON Schema (``inference.engine_args``).

The operator console edits a catalog model's ``engine_args`` through this form instead of raw
JSON: each property of the engine's schema becomes one input of its type, and the posted text is
converted back to the JSON type the schema asks for, then checked by the schema itself
(``validate_engine_args``, the same function the catalog service applies), so a rule exists once.

Contract:

- field names are the property names, under the form prefix ``ea`` (``ea-max_model_len``);
- ``integer`` -> an integer input (``int``); ``number`` -> a number input, stored as ``int`` when
  typed without a decimal point or exponent and ``float`` otherwise, so a value round-trips
  unchanged (``0`` stays ``0``, ``0.9`` stays ``0.9``): an unchanged form must not change the
  deployment spec's revision, which would restart the model's replicas;
- ``boolean`` -> a three-way select (engine default / yes / no), ``enum`` -> a select whose
  empty choice is the engine's default; ``string`` -> a text input; anything else a JSON input;
- an empty input leaves the argument out (the engine's default applies);
- ``ea-extra`` holds, as a JSON object, every stored argument the fields cannot show (a key the
  schema does not know, or a value that does not fit its field), so nothing is lost and an
  operator can still edit keys that have no field; the schema then decides whether they pass;
- the schema's errors are shown next to the argument they name, the rest above the fields.

The schemas carry no ``description`` today; a property's help text is its ``description`` when it
has one, followed by its constraints (range, pattern), which the schema does state.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from inference.engine_args import SCHEMAS, validate_engine_args

PREFIX = "ea"
EXTRA = "extra"
_NULL_CHOICE = "json:null"
_FLOAT_MARK = re.compile(r"[.eE]")


def _choice_key(value: Any) -> str:
    """The ``<option value>`` of an enum member: strings as they are, the rest as JSON."""
    if isinstance(value, str) and value and not value.startswith("json:"):
        return value
    return "json:" + json.dumps(value)


def _constraints(schema: dict[str, Any]) -> str:
    parts = []
    if "minimum" in schema:
        parts.append(f"≥ {schema['minimum']}")
    if "exclusiveMinimum" in schema:
        parts.append(f"> {schema['exclusiveMinimum']}")
    if "maximum" in schema:
        parts.append(f"≤ {schema['maximum']}")
    if "exclusiveMaximum" in schema:
        parts.append(f"< {schema['exclusiveMaximum']}")
    if "pattern" in schema:
        parts.append(f"pattern {schema['pattern']}")
    return ", ".join(parts)


def _help(schema: dict[str, Any]) -> str:
    kind = "one of the listed values" if "enum" in schema else schema.get("type", "JSON value")
    text = f"{kind}{', ' + _constraints(schema) if _constraints(schema) else ''}. "
    text += "Empty: the engine's default."
    description = schema.get("description")
    return f"{description} ({text})" if description else text[0].upper() + text[1:]


class EngineNumberField(forms.Field):
    """A JSON number: ``int`` when typed as a whole number without ``.``/exponent, else
    ``float``; range checks come from the schema."""

    widget = forms.NumberInput

    def __init__(self, *, schema: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.widget.attrs.setdefault("step", "any")
        for key, attr in (("minimum", "min"), ("maximum", "max")):
            if key in schema:
                self.widget.attrs[attr] = schema[key]

    def to_python(self, value: Any) -> int | float | None:
        text = "" if value is None else str(value).strip()
        if not text:
            return None
        try:
            number = Decimal(text)
        except InvalidOperation:
            raise ValidationError("Enter a number.", code="invalid") from None
        if not number.is_finite():
            raise ValidationError("Enter a finite number.", code="invalid")
        if _FLOAT_MARK.search(text):
            return float(number)
        return int(number)


class EngineEnumField(forms.ChoiceField):
    """One of the schema's ``enum`` members (any JSON type), or empty for the default."""

    def __init__(self, *, members: list[Any], **kwargs: Any) -> None:
        self.members = {_choice_key(member): member for member in members}
        choices = [("", "— engine default —")] + [
            (key, "none (null)" if member is None else str(member))
            for key, member in self.members.items()
        ]
        super().__init__(choices=choices, **kwargs)

    def member(self, key: str) -> Any:
        return self.members[key]


class ExtraArgsField(forms.JSONField):
    """The arguments without a field of their own, as one JSON object (empty: none)."""

    def prepare_value(self, value: Any) -> Any:
        if value is None or value == {}:
            return ""
        if isinstance(value, str):  # text as typed (a form redrawn for another engine kind)
            return value
        return super().prepare_value(value)

    def to_python(self, value: Any) -> Any:
        if value in (None, "") or (isinstance(value, str) and not value.strip()):
            return {}
        data = super().to_python(value)
        if data is None:  # "null": none
            return {}
        if not isinstance(data, dict):
            raise ValidationError('Must be a JSON object, like {"name": value}.', code="invalid")
        return data


def field_for(schema: dict[str, Any]) -> forms.Field:
    """The form field of one schema property."""
    options: dict[str, Any] = {"required": False, "help_text": _help(schema)}
    if "enum" in schema:
        return EngineEnumField(members=list(schema["enum"]), **options)
    kind = schema.get("type")
    if kind == "integer":
        return forms.IntegerField(
            min_value=schema.get("minimum"), max_value=schema.get("maximum"), **options
        )
    if kind == "number":
        return EngineNumberField(schema=schema, **options)
    if kind == "boolean":
        widget = forms.NullBooleanSelect()
        widget.choices = [("unknown", "— engine default —"), ("true", "Yes"), ("false", "No")]
        return forms.NullBooleanField(widget=widget, **options)
    if kind == "string":
        field = forms.CharField(max_length=schema.get("maxLength"), **options)
        if "pattern" in schema:
            field.widget.attrs["pattern"] = schema["pattern"]
        return field
    return forms.JSONField(**options)


def _fits(field: forms.Field, value: Any) -> bool:
    """Whether a stored value can be shown (and posted back unchanged) by its field."""
    if isinstance(field, EngineEnumField):
        return _choice_key(value) in field.members
    if isinstance(field, forms.NullBooleanField):
        return isinstance(value, bool)
    if isinstance(field, forms.IntegerField):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(field, EngineNumberField):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(field, forms.CharField):
        return isinstance(value, str) and value != ""
    return True


class EngineArgsForm(forms.Form):
    """The engine arguments of one engine kind; ``cleaned_data["engine_args"]`` is the dict to
    store once the form is valid (schema-checked)."""

    def __init__(
        self,
        data: Any = None,
        *,
        engine_kind: str,
        engine_args: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.engine_kind = engine_kind
        self.schema = SCHEMAS.get(engine_kind, {"type": "object", "properties": {}})
        properties: dict[str, Any] = self.schema.get("properties", {})
        initial: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in (engine_args or {}).items():
            field = field_for(properties[key]) if key in properties else None
            if field is None or not _fits(field, value):
                extra[key] = value
            elif isinstance(field, EngineEnumField):
                initial[key] = _choice_key(value)  # a stored null stays null
            elif isinstance(value, float):
                initial[key] = repr(value)  # 0.9 shows "0.9", 5.0 shows "5.0": both round-trip
            else:
                initial[key] = value
        if extra:
            initial[EXTRA] = extra
        super().__init__(data, prefix=PREFIX, initial=initial, **kwargs)
        self.extra_keys: frozenset[str] = frozenset()
        for key, schema in properties.items():
            self.fields[key] = field_for(schema)
            self.fields[key].label = key
        self.fields[EXTRA] = ExtraArgsField(
            required=False,
            label="Other arguments (JSON object)",
            help_text="Arguments without a field above, as a JSON object; empty for none. The "
            "engine's schema decides what is allowed.",
            widget=forms.Textarea(attrs={"rows": 3}),
        )

    @property
    def schema_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in self.fields if name != EXTRA]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        args: dict[str, Any] = {}
        for name, field in self.fields.items():
            if name == EXTRA or name not in data:
                continue
            value = data[name]
            if isinstance(field, EngineEnumField):
                if value == "":
                    continue
                args[name] = field.member(value)
            elif value is None or value == "":
                continue
            else:
                args[name] = value
        extra = data.get(EXTRA) or {}
        self.extra_keys = frozenset(extra)
        for key in sorted(set(extra) & set(args)):
            self.add_error(EXTRA, f"{key} has its own field above; set it there.")
        if self.errors:
            return data
        args = {**extra, **args}
        try:
            validate_engine_args(self.engine_kind, args)
        except ValidationError as error:
            self.add_schema_errors(error)
        data["engine_args"] = args
        return data

    def add_schema_errors(self, error: ValidationError) -> None:
        """Put ``validate_engine_args``'s (or the catalog service's) ``engine_args`` messages,
        ``"<argument>: <message>"``, next to the argument's field; the rest go on the extra
        arguments' field when they name a key without a field, else above the fields."""
        messages = error.message_dict.get("engine_args", []) if hasattr(error, "error_dict") else []
        if not messages and not hasattr(error, "error_dict"):
            messages = list(error.messages)
        for message in messages:
            where, _, text = message.partition(": ")
            top = where.split(".", 1)[0]
            if text and top in self.extra_keys:
                self.add_error(EXTRA, message)  # given in the JSON field: the error goes there
            elif text and top in self.fields and top != EXTRA:
                self.add_error(top, text)
            elif text and top == "engine_args" and self.data.get(self.add_prefix(EXTRA), ""):
                self.add_error(EXTRA, text)  # e.g. an argument the schema does not know
            elif text and top and " " not in top:
                self.add_error(EXTRA, message)
            else:
                self.add_error(None, message)
