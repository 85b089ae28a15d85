"""The URLs load without WeasyPrint: it is imported by the first PDF (billing/documents/render.py),
so a machine without Pango still serves every page that is not a PDF, and start-up does not pay
for loading Pango and parsing WeasyPrint's stylesheets."""

from __future__ import annotations

import os
import subprocess
import sys

CHECK = """
import sys
import django
django.setup()
import vlinders.urls  # every app's URLs, views and the documents they offer
from django.urls import reverse
reverse("console:org-billing", kwargs={"slug": "acme"})
loaded = sorted(name for name in sys.modules if name.split(".")[0] == "weasyprint")
print(",".join(loaded))
"""


def test_loading_the_urls_does_not_import_weasyprint() -> None:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "vlinders.settings"}
    result = subprocess.run(
        [sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
