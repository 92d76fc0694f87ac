# The gateway under gunicorn, as a non-root user on a slim Python base.
#   docker build -t gateway-app:0.1.0 .
#   docker run --rm -p 8080:8080 gateway-app:0.1.0
# conf/ and rego/ are baked in as defaults; mount your own directories and point
# GATEWAY_CONFIG_DIR / GATEWAY_REGO_DIR at them (deploy/k8s does, under /etc/gateway).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies and the package first: this layer is rebuilt only when the code changes.
COPY setup.cfg pyproject.toml README.md ./
COPY gateway_app ./gateway_app
RUN pip install . && rm -rf build gateway_app.egg-info

COPY wsgi.py ./
COPY conf ./conf
COPY rego ./rego

RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin gateway \
    && mkdir -p /etc/gateway/conf /etc/gateway/rego
USER 10001:10001

# gunicorn.conf.py reads these; the metrics directory must be writable (a tmpfs in Kubernetes).
ENV GATEWAY_CONFIG_DIR=/app/conf \
    GATEWAY_REGO_DIR=/app/rego \
    GATEWAY_LOG_FORMAT=json \
    PROMETHEUS_MULTIPROC_DIR=/tmp/gateway-metrics

EXPOSE 8080

HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/__gateway/health/live', timeout=2).status == 200 else 1)"]

# Exec form: gunicorn is PID 1 and receives SIGTERM (graceful stop) and SIGHUP directly.
CMD ["gunicorn", "-c", "conf/gunicorn.conf.py", "--bind", "0.0.0.0:8080", "wsgi:app"]
