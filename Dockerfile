# The gateway on the embedded default (SQLite + local files under /data), or on PostgreSQL and S3
# by setting GATEWAY_DATABASE_URL / GATEWAY_STORAGE_URL. No dev dependencies, runs as non-root.
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY gateway ./gateway
COPY resolvers ./resolvers
RUN pip wheel --no-cache-dir --wheel-dir /wheels -c constraints.txt .

FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8000 \
    GATEWAY_DATABASE_URL=sqlite+aiosqlite:////data/gateway.db \
    GATEWAY_STORAGE_URL=file:///data/files
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin gateway \
    && mkdir -p /data && chown gateway:gateway /data
USER gateway
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000
# Readiness, not mere liveness: healthy only while the database and the object store answer.
HEALTHCHECK --interval=30s --timeout=5s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"
CMD ["gateway", "serve"]
