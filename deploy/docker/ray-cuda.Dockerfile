# syntax=docker/dockerfile:1
# The data plane for NVIDIA GPU nodes: Ray's official CUDA image (the version pyproject.toml
# pins, which is the RayService's rayVersion) with Vlinders' serving code and vLLM's CUDA build
# (the `gpu` extra of pyproject.toml, resolved by pip as published). Build from the root:
#   docker build -f deploy/docker/ray-cuda.Dockerfile -t <registry>/vlinders-ray:<tag>-cuda .
# Not built or run here (no Docker engine, no GPU): docs/operations.md says what was checked.
FROM rayproject/ray:2.60.0-py311-cu128

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/home/ray/vlinders

WORKDIR /home/ray/vlinders
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users vlinders/ vlinders/
COPY --chown=ray:users tenants/ tenants/
COPY --chown=ray:users inference/ inference/
COPY --chown=ray:users billing/ billing/
COPY --chown=ray:users console/ console/
# The project's pins and the `gpu` extra (vllm==0.32.0 with its CUDA torch from PyPI). The
# project itself is installed too (non-editable); PYTHONPATH keeps the source tree first.
# DL3013 (pip versions unpinned) is ignored on purpose: every requirement of the project and of
# its `gpu` extra is pinned with == in pyproject.toml, which is what this installs.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[gpu]" \
 && python -c "import ray, vllm; assert ray.__version__ == '2.60.0', ray.__version__"

# The gateway spools usage batches here while the Celery broker is unreachable
# (VLINDERS_USAGE_SPOOL_DIR in deploy/k8s/base/configmap.yaml, rendered into serveConfigV2).
USER 0:0
RUN mkdir -p /var/spool/vlinders && chown 1000:100 /var/spool/vlinders
# Ray's image runs as the unprivileged user ray (uid 1000, group users).
USER 1000:100
