# syntax=docker/dockerfile:1
# Loopgate gateway image: `loopgate serve` (and `loopgate controller`, `loopgate sim`).
# The builder makes a wheel of this repo and a virtualenv with its runtime dependencies only
# (no dev, no vllm extra); the runtime stage copies that virtualenv onto a clean slim base.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/loopgate
# .dockerignore lets only pyproject.toml, README.md and the packages in.
COPY . .
RUN /opt/loopgate/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/loopgate/bin/pip install /wheels/loopgate-*.whl \
    && /opt/loopgate/bin/pip uninstall --yes pip setuptools wheel

FROM ${PYTHON_IMAGE} AS runtime
ARG LOOPGATE_UID=10001
ENV PATH=/opt/loopgate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The working dir holds var/spool, the event spool (a volume in compose and Kubernetes).
RUN groupadd --system --gid "${LOOPGATE_UID}" loopgate \
    && useradd --system --uid "${LOOPGATE_UID}" --gid loopgate \
        --home-dir /var/lib/loopgate --shell /usr/sbin/nologin loopgate \
    && mkdir -p /var/lib/loopgate/var/spool /etc/loopgate \
    && chown -R loopgate:loopgate /var/lib/loopgate
COPY --from=builder /opt/loopgate /opt/loopgate
WORKDIR /var/lib/loopgate
USER ${LOOPGATE_UID}:${LOOPGATE_UID}
EXPOSE 8080
# No curl in slim images: the interpreter checks liveness itself.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('LOOPGATE_SERVER__PORT', '8080'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["loopgate"]
CMD ["serve", "--config", "/etc/loopgate/config.yaml", "--host", "0.0.0.0"]
