# One image, either role: `telemetry collector ...` or `telemetry agent ...`.
# The base image is a build argument so the image can be built against a local mirror:
#   docker build --build-arg PYTHON_IMAGE=registry.local/python:3.11-slim .
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY collector ./collector
COPY agents ./agents
RUN python -m venv /opt/telemetry \
 && /opt/telemetry/bin/pip install --no-cache-dir --disable-pip-version-check ".[collector,postgres,system,fast]"

FROM ${PYTHON_IMAGE}
RUN groupadd --system telemetry \
 && useradd --system --gid telemetry --home-dir /var/lib/telemetry --create-home telemetry
COPY --from=build /opt/telemetry /opt/telemetry
ENV PATH=/opt/telemetry/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TELEMETRY_DB=/var/lib/telemetry/telemetry.db
USER telemetry
WORKDIR /var/lib/telemetry
VOLUME ["/var/lib/telemetry"]
EXPOSE 7878 7879
# Healthy when the collector's HTTP side answers /healthz (agents override or disable it).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('TELEMETRY_HTTP_PORT', '7879') + '/healthz', timeout=2)"]
ENTRYPOINT ["telemetry"]
# The HTTP API binds all interfaces here, so the collector requires a read token:
#   docker run -e TELEMETRY_HTTP_TOKEN=... sensor-telemetry
CMD ["collector", "--listen", "0.0.0.0:7878", "--http", "0.0.0.0:7879"]
