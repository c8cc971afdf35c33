# streamadapt service image: `streamadapt run --kafka`, settings from STREAMADAPT_* env vars.
#   docker build -t streamadapt:0.1.0 .
# The runtime stage runs as the unprivileged user 10001 (the Helm chart's runAsUser) and
# works with a read-only root filesystem: only /tmp and the checkpoint directory are written.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/streamadapt
ENV PATH=/opt/streamadapt/bin:$PATH
# torch first, from the CPU wheel index: a bare requirement would pull a multi-GB CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY streamadapt ./streamadapt
COPY connectors ./connectors
RUN pip install ".[confluent]"

FROM python:${PYTHON_VERSION}-slim
LABEL org.opencontainers.image.title="streamadapt" \
      org.opencontainers.image.description="Online streaming adaptation service for Kafka streams" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 streamadapt \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
      --shell /usr/sbin/nologin streamadapt \
 && mkdir -p /var/lib/streamadapt/checkpoints \
 && chown -R 10001:10001 /var/lib/streamadapt
COPY --from=build /opt/streamadapt /opt/streamadapt
ENV PATH=/opt/streamadapt/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    STREAMADAPT_HTTP__HOST=0.0.0.0 \
    STREAMADAPT_HTTP__PORT=9108 \
    STREAMADAPT_CHECKPOINT__DIR=/var/lib/streamadapt/checkpoints
USER 10001:10001
WORKDIR /tmp
EXPOSE 9108
VOLUME ["/var/lib/streamadapt/checkpoints"]
ENTRYPOINT ["streamadapt"]
CMD ["run", "--kafka"]
