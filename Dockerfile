# ctmm-bridge: a slim image that runs as the numeric non-root user 10001 and installs only what
# requirements.lock pins, each file checked against its hash (refresh: `make lock`).
#
#   docker build -t ctmm-bridge .
#   docker run ... ctmm-bridge                      # serve (SQLite: migrates itself)
#   docker run ... ctmm-bridge ctmm-bridge db upgrade  # PostgreSQL: the migration step, once
#   docker run ... ctmm-bridge ctmm-bridge worker      # a delivery worker
#
# Pin the base image by digest for byte-identical rebuilds:
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest> .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements.lock /tmp/requirements.lock
# Every distribution comes from the lock, with its hash: nothing is resolved at build time.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --require-hashes --no-deps -r /tmp/requirements.lock

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/srv/bridge \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BRIDGE_HOST=0.0.0.0 \
    BRIDGE_PORT=8080 \
    BRIDGE_DATABASE_URL=sqlite:////data/bridge.db
RUN groupadd --system --gid 10001 bridge \
    && useradd --system --uid 10001 --gid 10001 --home-dir /srv/bridge --no-create-home bridge \
    && mkdir -p /data /srv/bridge \
    && chown 10001:10001 /data \
    && printf '#!/bin/sh\nexec python -m app.cli "$@"\n' > /usr/local/bin/ctmm-bridge \
    && chmod 0755 /usr/local/bin/ctmm-bridge
COPY --from=build /opt/venv /opt/venv
COPY app /srv/bridge/app
COPY migrations /srv/bridge/migrations
WORKDIR /srv/bridge
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('BRIDGE_PORT', '8080'), timeout=2)"]
# Migrations are an explicit step on PostgreSQL (`ctmm-bridge db upgrade`, a job or init
# container, README: Upgrades); on SQLite `serve` brings its own file up to date.
CMD ["ctmm-bridge", "serve"]
