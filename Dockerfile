# ctmm-bridge: slim image, non-root, migrates then serves.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY migrations ./migrations
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BRIDGE_HOST=0.0.0.0 \
    BRIDGE_PORT=8080 \
    BRIDGE_DATABASE_URL=sqlite:////data/bridge.db
RUN useradd --system --uid 10001 --home-dir /srv/bridge bridge \
    && mkdir -p /data /srv/bridge \
    && chown bridge /data
COPY --from=build /install /usr/local
WORKDIR /srv/bridge
USER bridge
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD python -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('BRIDGE_PORT','8080'), timeout=2)" || exit 1
CMD ["sh", "-c", "ctmm-bridge db upgrade && exec ctmm-bridge serve"]
