"""How the management API's OpenAPI schema documents what every view shares: its errors.

Clients are generated from ``/api/v1/schema/``, so every status code the API can answer must be
in it, with the body it comes with; ``tests/test_api_contract.py`` runs schemathesis against the
live schema to hold the API to that. Rather than repeat the same responses on each view,
``AutoSchema`` adds them to every operation from what the operation is:

- **400** ``ValidationError`` when the operation takes a body or query parameters;
- **401** ``Error`` (with ``WWW-Authenticate``) and **403** ``Error`` when it needs a caller;
- **404** ``Error`` when its path names something (an organisation, a key, a model...);
- **413** and **415** ``Error`` when it takes a body.

A view may still declare any of these itself (``@extend_schema(responses=...)``), e.g. to say
which rule a 400 stands for; what it declares wins.

The two error shapes are the ones ``vlinders.api.exception_handler`` produces:

- ``Error``: ``{"detail": "..."}``, for everything but validation;
- ``ValidationError``: an object keyed by the request field that was wrong (``detail`` or
  ``non_field_errors`` for the request as a whole), each value a list of messages, or for a
  nested field (a list's items, a nested object) an object of the same kind keyed by index or
  sub-field. A body that does not parse at all is ``{"detail": "..."}``, which is both shapes.

Path parameters carry examples naming a real-looking organisation, key, member, model and alias
(``EXAMPLE_*``); the contract test seeds objects under those names so that the generated requests
reach the views rather than stopping at 404.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from rest_framework import fields, serializers

from vlinders.strict_json import decimal_pattern

EXAMPLE_ORG_SLUG = "acme"
EXAMPLE_KEY_ID = "6f1c2b9e-3d4a-4e5f-8a7b-9c0d1e2f3a4b"
EXAMPLE_MEMBER_ID = 42
EXAMPLE_MODEL_NAME = "llama-3.1-8b-instruct"
EXAMPLE_ALIAS_NAME = "llama"
EXAMPLE_INVITATION_ID = "2b8e4c1a-7d6f-4a3b-9c2e-1f0a5b6c7d8e"

# (a segment the path contains, parameter name) -> example; the first match wins.
_PATH_EXAMPLES: list[tuple[str, str, Any]] = [
    ("/keys/{id}", "id", EXAMPLE_KEY_ID),
    ("/members/{id}", "id", EXAMPLE_MEMBER_ID),
    ("/invitations/{id}", "id", EXAMPLE_INVITATION_ID),
    ("/models/{name}", "name", EXAMPLE_MODEL_NAME),
    ("/aliases/{name}", "name", EXAMPLE_ALIAS_NAME),
    ("{org_slug}", "org_slug", EXAMPLE_ORG_SLUG),
]
# The organisation slug in every organisation-scoped URL (``tenants.api.urls.ORG``).
ORG_SLUG_PATTERN = r"^[-a-zA-Z0-9_]+$"

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

# Rules a well-formed request can still break, which a schema cannot state as constraints (they
# depend on other fields, the clock or what exists): said in words in the operation's 400. The
# contract test expects a 400 for schema-valid input on these operations, and only on these.
BUSINESS_RULES: dict[str, str] = {
    "orgs_keys_create": "`expires_at` must be in the future; `allowed_models` must name models "
    "or aliases the organisation may use; limits may only tighten the organisation's; `scopes` "
    "may not exceed what the caller's role may grant.",
    "orgs_keys_partial_update": "As when creating a key; and a key that was rotated out "
    "(`replaced_by` set) cannot be changed.",
    "orgs_members_create": "`user` must name an active user (username or e-mail) who is not a "
    "member yet; only an owner may grant the owner role.",
    "orgs_invitations_create": "`email` must be an address the platform accepts for sending "
    "(Django's e-mail validator, stricter than the `email` format).",
    "orgs_invitations_resend_create": "An accepted or revoked invitation cannot be resent.",
    "orgs_invitations_destroy": "An accepted invitation cannot be revoked (remove the member).",
    "orgs_audit_list": "`to` must be after `from`; dates must exist in the calendar "
    "(`2026-02-30` does not).",
    "orgs_audit_csv": "As for the JSON list.",
    "orgs_members_partial_update": "Only an owner may grant or take the owner role, and an "
    "organisation keeps at least one owner.",
    "orgs_members_destroy": "An organisation keeps at least one owner.",
    "aliases_create": "`target` must name a catalog model; the name must not be taken by a "
    "model or alias.",
    "aliases_update": "As when creating an alias.",
    "aliases_partial_update": "As when creating an alias.",
    "models_create": "`organizations` must be slugs of existing organisations; `engine_args` "
    "must match the engine kind's arguments; the name must not be taken by a model or alias; "
    "`min_replicas` may not exceed `max_replicas`.",
    "models_update": "As when adding a model.",
    "models_partial_update": "As when adding a model.",
    "models_scale_create": "Either `replicas` or `min_replicas` and `max_replicas`, not both; "
    "`min_replicas` may not exceed `max_replicas`; `min_replicas` 0 needs `scale_to_zero`, which "
    "a fixed count or a non-zero minimum may not set.",
    "orgs_usage_retrieve": "`to` must be after `from`; a range may span at most 366 days with "
    "`granularity=day` and 31 with `granularity=hour`; dates must exist in the calendar "
    "(`2026-02-30` does not); a JSON report may hold at most 10,000 rows.",
    "orgs_usage_csv": "As for the JSON report, without the row limit.",
    "staff_reports_revenue": "`month` must not be after the current UTC month.",
    "staff_reports_margin": "`month` must not be after the current UTC month.",
}


class ErrorSerializer(serializers.Serializer[Any]):
    """Every error but a validation error: what went wrong, for a person to read."""

    detail = serializers.CharField(help_text="What went wrong.")


class ValidationErrorSerializer(serializers.Serializer[Any]):
    """A 400: what was wrong with the request, per field (schema in ``ValidationErrorSchema``)."""


class ValidationErrorSchema(OpenApiSerializerExtension):  # type: ignore[no-untyped-call]
    """``ValidationErrorSerializer`` as a schema: field -> messages, one level of nesting named
    (deeper nesting is free-form), so generated clients get a plain map of lists of strings."""

    target_class = "vlinders.openapi.ValidationErrorSerializer"

    def map_serializer(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        messages = {"type": "array", "items": {"type": "string"}}
        nested = {
            "type": "object",
            "description": "A nested field's errors, keyed by sub-field or list index.",
            "additionalProperties": {},
        }
        return {
            "type": "object",
            "description": (
                "Keyed by the request field that was wrong (a query parameter or a body field); "
                "`detail` or `non_field_errors` for the request as a whole. Each value is a list "
                "of messages, or for a nested field an object of the same kind keyed by "
                "sub-field or list index."
            ),
            "properties": {
                "detail": {
                    "oneOf": [{"type": "string"}, messages],
                    "description": "About the request as a whole (e.g. a body that does not "
                    "parse, or a rule between several fields).",
                },
                "non_field_errors": messages,
            },
            "additionalProperties": {"oneOf": [messages, nested]},
            "example": {"requests_per_minute": ["May only tighten the organisation's limit."]},
        }


_ERROR_DESCRIPTIONS = {
    "400": "The request is invalid: a message per field that was wrong.",
    "401": "No credentials, or they do not hold: not signed in, or an API key that is unknown, "
    "revoked, expired or of a suspended organisation.",
    "403": "Authenticated, but not allowed: the role in the organisation (or the API key's "
    "scopes) is too weak, the action is for platform staff, or a signed-in request came "
    "without its CSRF token.",
    "404": "Not found, or in an organisation the caller is not a member of (the two are "
    "indistinguishable on purpose).",
    "413": "The body is larger than the server accepts.",
    "415": "The body's content type is not one the operation accepts.",
}


class AutoSchema(SpectacularAutoSchema):
    """drf-spectacular's ``AutoSchema`` plus the error responses every operation can give
    (module docstring), and examples for path parameters."""

    def get_operation(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        operation: dict[str, Any] | None = super().get_operation(*args, **kwargs)
        if operation is None:
            return None
        self._describe_path_parameters(operation)
        responses: dict[str, Any] = operation["responses"]
        for code in self._error_codes(operation):
            if code not in responses:
                serializer = ValidationErrorSerializer if code == "400" else ErrorSerializer
                responses[code] = self._get_response_for_code(serializer, code)  # type: ignore[no-untyped-call]
                responses[code]["description"] = _ERROR_DESCRIPTIONS[code]
                if code == "400" and operation["operationId"] in BUSINESS_RULES:
                    rules = BUSINESS_RULES[operation["operationId"]]
                    responses[code]["description"] += f" Also refused: {rules}"
                if code == "401":
                    responses[code]["headers"] = {
                        "WWW-Authenticate": {
                            "schema": {"type": "string"},
                            "description": "The scheme to authenticate with: "
                            '`Bearer realm="vlinders"`.',
                        }
                    }
        operation["responses"] = dict(sorted(responses.items()))
        return operation

    def _map_serializer_field(self, field: Any, direction: Any, *args: Any, **kwargs: Any) -> Any:
        """Decimal strings get the exact pattern the API enforces (``decimal_pattern``), not
        drf-spectacular's, which also allows ``""`` and ``"-"``."""
        schema = super()._map_serializer_field(field, direction, *args, **kwargs)  # type: ignore[no-untyped-call]
        if isinstance(field, fields.DecimalField) and schema.get("type") == "string":
            schema["pattern"] = decimal_pattern(field)
        return schema

    def _error_codes(self, operation: dict[str, Any]) -> list[str]:
        parameters = operation.get("parameters", [])
        takes_body = "requestBody" in operation
        codes: list[str] = []
        # A write's service may refuse it on a rule even when it takes no body (e.g. revoke).
        if self.method in _BODY_METHODS or any(p["in"] == "query" for p in parameters):
            codes.append("400")
        # drf-spectacular lists ``{}`` among the security requirements when no caller is needed.
        if {} not in operation.get("security", [{}]):
            codes += ["401", "403"]
        if any(p["in"] == "path" for p in parameters):
            codes.append("404")
        if takes_body:
            codes += ["413", "415"]
        return codes

    def _describe_path_parameters(self, operation: dict[str, Any]) -> None:
        for parameter in operation.get("parameters", []):
            if parameter["in"] != "path":
                continue
            name = parameter["name"]
            if name == "org_slug":
                parameter["schema"].setdefault("pattern", ORG_SLUG_PATTERN)
                parameter.setdefault("description", "The organisation's slug.")
            for segment, parameter_name, example in _PATH_EXAMPLES:
                if parameter_name == name and segment in self.path:
                    parameter.setdefault("example", example)
                    break
