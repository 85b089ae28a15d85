"""Console pages: sign-in, a landing page, and the usage dashboards (the month from the rollups,
then live over the websocket of ``console.consumers``)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required, user_passes_test
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, render

from billing import selectors as usage
from billing import spend
from tenants.models import Organization
from tenants.selectors import membership_role, organizations_for_user


@login_required
def home(request: HttpRequest) -> HttpResponse:
    organizations = organizations_for_user(request.user).order_by("slug")
    return render(request, "console/home.html", {"organizations": organizations})


@login_required
def org_usage(request: HttpRequest, slug: str) -> HttpResponse:
    """An organisation's usage for a month (``?month=YYYY-MM``, default the current one), for
    any of its members; outsiders get 404 as in the API. The live panel updates from the
    organisation's websocket."""
    organization = get_object_or_404(Organization, slug=slug)
    if membership_role(user=request.user, organization=organization) is None:
        raise Http404
    month = request.GET.get("month") or spend.current_month()
    try:
        start, end = spend.month_range(month)
    except ValueError:
        return HttpResponseBadRequest("month must be YYYY-MM", content_type="text/plain")
    context = {
        "organization": organization,
        "month": month,
        "days": usage.month_by_day(organization, start, end),
        "models": usage.month_by_model(organization, start, end),
        "totals": usage.usage_totals(organization=organization, start=start, end=end),
        "live": month == spend.current_month(),
    }
    return render(request, "console/org_usage.html", context)


@user_passes_test(lambda user: user.is_active and user.is_staff)
def staff_usage(request: HttpRequest) -> HttpResponse:
    """Platform staff: every organisation's live usage (``ws/staff/usage/``)."""
    return render(request, "console/staff_usage.html")
