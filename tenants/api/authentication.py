"""Authentication of the management API with an API key that has a management scope."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from tenants import selectors, services
from tenants.keys import KEY_PREFIX
from tenants.models import ApiKey


@dataclass(frozen=True)
class ApiKeyPrincipal:
    """Stands in for ``request.user`` when a request is authenticated by an API key.

    It is never staff: a key acts inside its own organisation only, with the role its scopes give
    (``tenants.roles.role_of_key_scopes``).
    """

    api_key: ApiKey
    is_authenticated: bool = True
    is_staff: bool = False
    is_superuser: bool = False
    is_active: bool = True

    @property
    def pk(self) -> None:
        return None


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer vlk_...``. Other Authorization values are left to other classes."""

    def authenticate(self, request: Request) -> tuple[ApiKeyPrincipal, ApiKey] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token.startswith(KEY_PREFIX):
            return None
        api_key = selectors.api_key_from_plaintext(token)
        if api_key is None:
            raise exceptions.AuthenticationFailed("Invalid API key.")
        status = api_key.status
        if status != ApiKey.Status.ACTIVE:
            raise exceptions.AuthenticationFailed(f"This API key is {status}.")
        if not api_key.organization.is_active:
            raise exceptions.AuthenticationFailed("This API key's organisation is suspended.")
        services.api_key_touch(
            api_key, resolution_seconds=settings.VLINDERS_KEY_LAST_USED_RESOLUTION_SECONDS
        )
        return ApiKeyPrincipal(api_key=api_key), api_key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="vlinders"'
