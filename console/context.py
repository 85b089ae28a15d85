"""Template context for every console page: the organisation page's ``OrgContext`` (set by
``console.scoping.org_page``) as ``ctx``, so the layout can draw the navigation and switcher."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest


def org_context(request: HttpRequest) -> dict[str, Any]:
    ctx = getattr(request, "org_context", None)
    return {"ctx": ctx} if ctx is not None else {}
