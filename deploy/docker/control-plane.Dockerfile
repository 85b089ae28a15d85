# syntax=docker/dockerfile:1
# The control plane: Django (console, management API, admin) served by uvicorn (ASGI: HTTP and
# the console's websockets), and the Celery worker and beat -- one image, three commands
# (deploy/k8s/base: web, worker, beat, migrate). Build from the repository root:
#   docker build -f deploy/docker/control-plane.Dockerfile -t <registry>/vlinders-control-plane:<tag> .
# Probes: the web container answers GET /healthz (Kubernetes httpGet probes, deploy/k8s/base/web.yaml);
# the worker is probed with `celery inspect ping`. No HEALTHCHECK (see the end).

# --- 1. The console's browser libraries, exactly as the npm lockfile pins them ------------------
FROM node:22.12.0-bookworm-slim AS assets
WORKDIR /src/console/assets
COPY console/assets/package.json console/assets/package-lock.json ./
# --omit=dev: axe-core is only for the end-to-end tests' accessibility check.
RUN npm ci --omit=dev --no-audit --no-fund --loglevel=error

# --- 2. The Python dependencies, pinned by pyproject.toml, in a virtualenv ----------------------
FROM python:3.11.14-slim-bookworm AS python-deps
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY pyproject.toml /src/pyproject.toml
# Exactly the project's dependencies (every one pinned with ==), not the project itself: the code
# runs from /app, as in the repository. No engine extra: vLLM runs in the Ray image, not here.
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies']))" > /src/requirements.txt \
 && /opt/venv/bin/pip install --no-cache-dir -r /src/requirements.txt

# --- 3. The runtime image ----------------------------------------------------------------------
FROM python:3.11.14-slim-bookworm
# WeasyPrint (invoice and statement PDFs) renders with Debian's Pango and needs one font.
# DL3008 (apt versions unpinned) is ignored on purpose: Debian stable's security updates replace
# these versions and its mirrors drop the old ones, so a pinned build breaks within weeks; the
# base image's tag pins the Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 vlinders \
 && useradd --system --uid 10001 --gid vlinders --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin vlinders
COPY --from=python-deps /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VLINDERS_VAR_DIR=/app/var
WORKDIR /app
# The code is owned by root and read-only to the platform's user.
COPY manage.py pyproject.toml ./
COPY vlinders/ vlinders/
COPY tenants/ tenants/
COPY inference/ inference/
COPY billing/ billing/
COPY console/ console/
COPY --from=assets /src/console/assets/node_modules console/assets/node_modules
# Static files (the console's, the admin's, the API docs', the npm libraries) collected into
# STATIC_ROOT (VLINDERS_VAR_DIR/static) at build time; whitenoise serves them, so the root file
# system can be read-only at run time. collectstatic runs in development mode and so generates
# the single-machine secrets into var/: they are deleted, never shipped.
RUN python manage.py collectstatic --noinput --verbosity 0 \
 && rm -f var/*.secret var/*.sqlite3* \
 && test -f var/static/vendor/htmx/htmx.min.js
USER 10001:10001
EXPOSE 8000
# No HEALTHCHECK: the same image runs the web server, the Celery worker and beat, and only the
# first answers HTTP. Kubernetes ignores HEALTHCHECK anyway; the probes are in the manifests.
HEALTHCHECK NONE
CMD ["uvicorn", "vlinders.asgi:application", "--host", "0.0.0.0", "--port", "8000"]
