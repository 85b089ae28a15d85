"""The Vlinders platform package: settings, URLs, ASGI/WSGI entry points and the Celery app.

It is called ``vlinders`` rather than ``platform`` because a top-level ``platform`` package would
shadow Python's standard-library module of that name, which Ray, Celery and others import.
"""

from vlinders.celery import app as celery_app

__all__ = ["celery_app"]
