"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` with the status
OpenAI's clients expect (DESIGN.md, conventions). Every refusal of the gateway is one of these."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ApiError(Exception):
    """An error to return to the client as-is. ``headers`` are added to the response."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __reduce__(self) -> tuple[Any, ...]:
        # Errors raised in a model server cross Ray by pickle: keep every field.
        fields = (self.status, self.message, self.type, self.param, self.code, self.headers)
        return (type(self), fields)

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def invalid(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """400: the request is malformed or a parameter is out of range."""
    return ApiError(400, message, "invalid_request_error", param, code)


def unauthorized(message: str, code: str = "invalid_api_key") -> ApiError:
    return ApiError(401, message, "invalid_request_error", None, code)


def forbidden(message: str, code: str, param: str | None = None) -> ApiError:
    return ApiError(403, message, "invalid_request_error", param, code)


def model_not_found(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        "model",
        "model_not_found",
    )


def unavailable(message: str, code: str = "service_unavailable") -> ApiError:
    """503: no capacity, or a dependency (Redis, the engine) is down. Safe to retry."""
    return ApiError(503, message, "server_error", None, code, {"Retry-After": "1"})
