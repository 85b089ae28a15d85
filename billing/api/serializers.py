"""Shapes of the usage API: the query (validated, with field messages) and the report."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from billing.selectors import DIMENSIONS

# Longest range per granularity: bounds the work of one request (and the rows it returns).
MAX_RANGE = {"hour": timedelta(days=31), "day": timedelta(days=366)}
_TIME_FORMATS = ["iso-8601", "%Y-%m-%d"]


# What ``from`` and ``to`` may be, exactly: a date, or a date-time on a whole hour with an
# optional offset in whole hours (``2026-03-01``, ``2026-03-01T13:00:00Z``,
# ``2026-03-01T13:00+02:00``). The schema states this pattern and the API checks it before
# parsing, so the two cannot disagree about what is well-formed.
TIME_PATTERN = (
    r"^[1-9][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"(T([01][0-9]|2[0-3]):00(:00(\.0{1,6})?)?(Z|[+-]([01][0-9]|2[0-3]):00)?)?$"
)
# ``group_by``: dimensions separated by commas (spaces and empty items are ignored).
GROUP_BY_PATTERN = r"^ *((key|model) *)?(, *((key|model) *)?)*$"


@extend_schema_field({"type": "string", "pattern": GROUP_BY_PATTERN, "default": ""})
class _GroupByField(serializers.CharField):
    """``group_by``: the schema states ``GROUP_BY_PATTERN``; ``validate_group_by`` enforces it."""


@extend_schema_field({"type": "string", "pattern": TIME_PATTERN})
class _HourField(serializers.DateTimeField):
    """A date or a whole-hour date-time, refused with a 400 unless it matches ``TIME_PATTERN``
    (Python's ISO parser alone would also take ``2026-03-01T13``, week dates and more)."""

    def to_internal_value(self, value: Any) -> datetime:
        if not isinstance(value, str) or not re.fullmatch(TIME_PATTERN, value):
            raise serializers.ValidationError(
                "Wrong format: must be a date (2026-03-01) or a date-time on a whole hour, with "
                "an offset in whole hours if any (2026-03-01T13:00:00Z)."
            )
        return super().to_internal_value(value)


def _start_of_month(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _next_hour(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


class _KeywordNames:
    """Fields named ``from_``/``errors_`` are served as ``from``/``errors``: ``from`` is a Python
    keyword, and ``errors`` would hide ``Serializer.errors``."""

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        fields = super().get_fields()  # type: ignore[misc]
        return {name.removesuffix("_"): field for name, field in fields.items()}


class UsageQuerySerializer(_KeywordNames, serializers.Serializer[Any]):
    """``from``/``to``: ISO 8601 date (``2026-03-01``) or date-time (``2026-03-01T13:00:00Z``;
    without an offset it is UTC), on a whole hour; ``from`` inclusive, ``to`` exclusive. Default:
    the current UTC month up to the end of the current hour."""

    from_ = _HourField(
        required=False,
        input_formats=_TIME_FORMATS,
        default_timezone=UTC,
        help_text="Start (inclusive), a date or a date-time on a whole hour, UTC unless an offset "
        "is given. Default: the start of the current UTC month.",
    )
    to = _HourField(
        required=False,
        input_formats=_TIME_FORMATS,
        default_timezone=UTC,
        help_text="End (exclusive), like `from`. Default: the end of the current hour.",
    )
    granularity = serializers.ChoiceField(
        choices=["day", "hour"],
        default="day",
        help_text="Bucket size: UTC days or hours. At most 366 days of `day` and 31 of `hour`.",
    )
    group_by = _GroupByField(
        required=False,
        default="",
        allow_blank=True,
        help_text="Comma-separated dimensions to split each bucket by: `key`, `model` or both.",
    )

    @staticmethod
    def _whole_hour(value: datetime) -> datetime:
        value = value.astimezone(UTC)
        if (value.minute, value.second, value.microsecond) != (0, 0, 0):
            raise serializers.ValidationError(
                "Must be on a whole hour (usage is kept per hour), e.g. 2026-03-01T13:00:00Z."
            )
        return value

    def validate_from(self, value: datetime) -> datetime:
        return self._whole_hour(value)

    def validate_to(self, value: datetime) -> datetime:
        return self._whole_hour(value)

    def validate_group_by(self, value: str) -> list[str]:
        wanted = {part.strip() for part in value.split(",") if part.strip()}
        unknown = sorted(wanted - set(DIMENSIONS))
        if unknown:
            raise serializers.ValidationError(
                f"Unknown dimension {', '.join(map(repr, unknown))}; use key, model or both."
            )
        if not re.fullmatch(GROUP_BY_PATTERN, value):
            raise serializers.ValidationError("Dimensions separated by commas: key, model or both.")
        return [d for d in DIMENSIONS if d in wanted]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        now = timezone.now()
        start = attrs.get("from") or _start_of_month(now)
        end = attrs.get("to") or _next_hour(now)
        if start >= end:
            raise serializers.ValidationError({"to": "Must be after `from`."})
        granularity = attrs["granularity"]
        if end - start > MAX_RANGE[granularity]:
            raise serializers.ValidationError(
                {
                    "to": f"The range may span at most {MAX_RANGE[granularity].days} days with "
                    f"granularity={granularity}."
                }
            )
        return attrs | {"from": start, "to": end}


class UsageQueryWithFormatSerializer(UsageQuerySerializer):
    format = serializers.ChoiceField(
        choices=["json", "csv"],
        default="json",
        help_text="`csv` returns the rows as CSV, like `usage.csv`.",
    )


class _MetricsSerializer(_KeywordNames, serializers.Serializer[Any]):
    requests = serializers.IntegerField()
    errors_ = serializers.IntegerField(help_text="Requests that did not succeed (status >= 400).")
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    cached_tokens = serializers.IntegerField(help_text="Part of prompt_tokens.")
    total_tokens = serializers.IntegerField(help_text="prompt_tokens + completion_tokens.")
    cost = serializers.DecimalField(
        max_digits=24, decimal_places=12, help_text="USD, a decimal string (never a float)."
    )


class UsageRowSerializer(_MetricsSerializer):
    start = serializers.DateTimeField(help_text="Start of the UTC day or hour.")
    api_key = serializers.UUIDField(
        source="api_key_id", allow_null=True, help_text="Null unless grouped by key."
    )
    api_key_name = serializers.CharField(allow_null=True)
    model = serializers.CharField(allow_null=True, help_text="Null unless grouped by model.")


class UsageReportSerializer(_KeywordNames, serializers.Serializer[Any]):
    organization = serializers.CharField(help_text="The organisation's slug.")
    from_ = _HourField()
    to = serializers.DateTimeField()
    granularity = serializers.ChoiceField(choices=["day", "hour"])
    group_by = serializers.ListField(child=serializers.ChoiceField(choices=list(DIMENSIONS)))
    rows = UsageRowSerializer(many=True)
    totals = _MetricsSerializer()
