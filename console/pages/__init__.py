"""The organisation pages of the console, one module per part (see ``console/urls.py``). Every
view is wrapped in ``console.scoping.org_page`` and calls the same services and selectors as the
management API."""
