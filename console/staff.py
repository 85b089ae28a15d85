"""The one rule of every platform-staff page (``/staff/…``): who may see it.

Anonymous visitors get the sign-in page; signed-in users who are not active staff get 404, so the
operator console does not even admit to existing (the tenant console answers outsiders the same
way). Every staff view is wrapped in :func:`staff_page`; the role matrix tests check each one.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse

View = Callable[..., HttpResponse]


def staff_page(view: View) -> View:
    """Staff only: anonymous -> the sign-in page; signed in but not staff -> 404."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        user = request.user
        if not user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not (user.is_active and user.is_staff):
            raise Http404("No such page.")
        return view(request, *args, **kwargs)

    return wrapper
