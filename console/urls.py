"""The console's URLs. Each page module under ``console/pages/`` owns the routes of its part of
an organisation (``/orgs/<slug>/…``); the names the navigation links to are listed in
``console/templates/console/base.html``."""

from django.contrib.auth import views as auth_views
from django.urls import include, path

from console import views
from console.pages import (
    account,
    audit,
    billing,
    keys,
    overview,
    people,
    playground,
    requests,
    staff_billing,
    staff_catalog,
    staff_cluster,
    staff_dead_letters,
    staff_deploy,
    staff_tenants,
    staff_usage,
    usage,
)

app_name = "console"

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", include(account.urlpatterns)),
    path("orgs/<slug:slug>/", include(overview.urlpatterns)),
    path("orgs/<slug:slug>/", include(keys.urlpatterns)),
    path("orgs/<slug:slug>/", include(usage.urlpatterns)),
    path("orgs/<slug:slug>/", include(requests.urlpatterns)),
    path("orgs/<slug:slug>/", include(audit.urlpatterns)),
    path("orgs/<slug:slug>/", include(people.urlpatterns)),
    path("orgs/<slug:slug>/", include(playground.urlpatterns)),
    path("orgs/<slug:slug>/", include(billing.urlpatterns)),
    path("staff/", include(staff_usage.urlpatterns)),
    path("staff/", include(staff_dead_letters.urlpatterns)),
    path("staff/", include(staff_tenants.urlpatterns)),
    path("staff/", include(staff_catalog.urlpatterns)),
    path("staff/", include(staff_deploy.urlpatterns)),
    path("staff/", include(staff_cluster.urlpatterns)),
    path("staff/", include(staff_billing.urlpatterns)),
    path("invitations/<str:token>/", views.invitation, name="invitation"),
]
