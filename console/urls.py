from django.contrib.auth import views as auth_views
from django.urls import path

from console import views

app_name = "console"

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("orgs/<slug:slug>/usage/", views.org_usage, name="org-usage"),
    path("staff/usage/", views.staff_usage, name="staff-usage"),
    path("invitations/<str:token>/", views.invitation, name="invitation"),
]
