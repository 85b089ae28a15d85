"""API-wide behaviour shared by every DRF view."""

from __future__ import annotations

import traceback
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus:

    - a Django ``ValidationError`` raised by a service becomes a 400 with field messages
      (services validate business rules; views stay thin), never a 500;
    - a body over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` is a JSON 413, not Django's HTML 400;
    - a body nested too deeply for the parser (``[[[[...``: ``RecursionError``) and text that
      cannot be stored as UTF-8 (a lone surrogate such as ``"\\ud800"``, which JSON allows) are
      400s, never 500s.
    """
    if isinstance(exc, RecursionError) and _raised_while_parsing(exc):
        return Response({"detail": "Request body is nested too deeply."}, status=400)
    if _is_lone_surrogate(exc):
        set_rollback()  # it may have come from the database, mid-transaction
        return Response(
            {"detail": "Request contains text that is not valid Unicode (a lone surrogate)."},
            status=400,
        )
    if isinstance(exc, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return Response({"detail": f"Request body is larger than {limit} bytes."}, status=413)
    if isinstance(exc, DjangoValidationError):
        if hasattr(exc, "error_dict"):
            exc = exceptions.ValidationError(exc.message_dict)
        else:
            exc = exceptions.ValidationError({"detail": exc.messages})
    response = drf_exception_handler(exc, context)
    if response is not None:
        # Messages may quote the input ('"\\ud800" is not a valid choice.'); a lone surrogate
        # would make rendering the 400 itself fail with a 500.
        response.data = _without_surrogates(response.data)
    return response


def _raised_while_parsing(exc: BaseException) -> bool:
    """Whether ``exc`` came out of a DRF parser (so it is about the body, not a server bug)."""
    return any(
        frame.f_globals.get("__name__") == "rest_framework.parsers"
        for frame, _ in traceback.walk_tb(exc.__traceback__)
    )


def _is_lone_surrogate(exc: BaseException) -> bool:
    """A lone surrogate from the request (valid JSON, not encodable as UTF-8), possibly wrapped
    by the database layer."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, UnicodeEncodeError) and "surrogate" in current.reason:
            return True
        current = current.__cause__ or current.__context__
    return False


def _without_surrogates(data: Any) -> Any:
    """``data`` with every lone surrogate in its strings written as an escape (``\\ud800``)."""
    if isinstance(data, str):
        return data.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(data, dict):
        return {_without_surrogates(k): _without_surrogates(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_without_surrogates(item) for item in data]
    return data


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """Django's 404 handler (``handler404``): under ``/api/`` the API's JSON error, elsewhere the
    usual page.

    A URL that matches no route (``/api/v1/orgs/a%20b/``: a slug can have no space) never
    reaches DRF, and Django's HTML page would reach a client that the schema promised
    ``{"detail": ...}``. Redirects to the URL with a slash (``APPEND_SLASH``) still happen first.
    """
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Not found."}, status=404)
    return defaults.page_not_found(request, exception)
