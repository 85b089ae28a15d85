"""Pagination of the management API's lists."""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import ValidationError
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request

# The largest ``limit`` and ``offset`` accepted: Postgres' integer. Larger values mean nothing
# for a list (and a ``limit`` past a bigint would reach the database as an error).
MAX_PARAMETER = 2**31 - 1


class StrictLimitOffsetPagination(LimitOffsetPagination):
    """``?limit=`` and ``?offset=``, refused with a 400 naming the parameter when they are not
    what the schema says (an integer, ``limit`` at least 1, ``offset`` at least 0, both at most
    ``MAX_PARAMETER``).

    DRF's own class silently replaces a bad value with the default (``offset=null`` read as 0,
    ``limit=-5`` as the page size): a client with a bug got a page it did not ask for, and the
    schema's ``integer`` was not what the API did. Absent parameters keep their defaults.
    """

    def get_limit(self, request: Request) -> int | None:
        return self._parameter(
            request, self.limit_query_param, minimum=1, default=self.default_limit
        )

    def get_offset(self, request: Request) -> int:
        offset = self._parameter(request, self.offset_query_param, minimum=0, default=0)
        assert offset is not None
        return offset

    @staticmethod
    def _parameter(request: Request, name: str, *, minimum: int, default: int | None) -> int | None:
        raw = request.query_params.get(name)
        if raw is None:
            return default
        # int() also reads " 1", "1_000" and "٣" (other scripts' digits); the schema means digits.
        if not (raw.isascii() and raw.isdigit()) or not minimum <= int(raw) <= MAX_PARAMETER:
            raise ValidationError(
                {name: [f"Must be a whole number from {minimum} to {MAX_PARAMETER}."]}
            )
        return int(raw)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        bounds = {self.limit_query_param: 1, self.offset_query_param: 0}
        for parameter in parameters:
            if parameter["name"] in bounds:
                parameter["schema"] |= {
                    "minimum": bounds[parameter["name"]],
                    "maximum": MAX_PARAMETER,
                }
        return parameters
