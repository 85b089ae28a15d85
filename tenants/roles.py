"""What each role may do. One ordering, used by the services and by the API's scoping."""

from __future__ import annotations

from tenants.models import Role, Scope

_RANK = {Role.VIEWER: 0, Role.MEMBER: 1, Role.ADMIN: 2, Role.OWNER: 3}

# What a role needs for each kind of action.
READ = Role.VIEWER  # see the organisation, its members, keys, limits and models
USE = Role.MEMBER  # create and manage API keys of one's own
MANAGE = Role.ADMIN  # manage every key, the members and the organisation's settings
OWN = Role.OWNER  # grant or take the owner role


def role_at_least(role: str | None, minimum: str) -> bool:
    """Whether ``role`` is ``minimum`` or more powerful. ``None`` (no role) never is."""
    if role is None:
        return False
    return _RANK[Role(role)] >= _RANK[Role(minimum)]


def weaker_role(first: Role, second: Role) -> Role:
    """The less powerful of two roles."""
    return first if _RANK[Role(first)] <= _RANK[Role(second)] else second


def scopes_allowed_for(role: str) -> set[str]:
    """The key scopes a person with ``role`` may put on a key they create.

    A member may not mint a key that writes through the management API: that would make the key
    more powerful than its creator.
    """
    allowed = {Scope.INFERENCE.value, Scope.MANAGEMENT_READ.value}
    if role_at_least(role, MANAGE):
        allowed.add(Scope.MANAGEMENT_WRITE.value)
    return allowed


def role_of_key_scopes(scopes: list[str]) -> Role | None:
    """The role an API key acts with on the management API, from its scopes."""
    if Scope.MANAGEMENT_WRITE in scopes:
        return Role.ADMIN
    if Scope.MANAGEMENT_READ in scopes:
        return Role.VIEWER
    return None
