"""WSGI entry point (HTTP only; use the ASGI one for websockets)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vlinders.settings")

application = get_wsgi_application()
