# rnnserve server image: the client and server packages on onnxruntime. No torch.
#
#   docker build -f docker/server.Dockerfile -t rnnserve-server .
#   docker run --rm -p 127.0.0.1:50051:50051 -v "$PWD/models:/models:ro" rnnserve-server
#
# Build context: the repository root. Stage `deps` installs the third-party dependencies into a
# virtual environment at /opt/venv, stage `wheels` builds the project's own wheels, and the
# runtime stage copies the environment and installs the wheels into it: it carries no build
# tools or pip caches, and a change to the code rebuilds only the last, small layers.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS deps
# Build stages carry this label so that superseded ones can be pruned by it (tests/docker).
LABEL org.rnnserve.stage=deps
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# A layer that changes only with the pyproject files.
COPY docker/pyproject-deps.py docker/
COPY client/pyproject.toml client/
COPY server/pyproject.toml server/
RUN python docker/pyproject-deps.py client/pyproject.toml server/pyproject.toml > requirements.txt \
    && pip install --requirement requirements.txt


FROM deps AS wheels
LABEL org.rnnserve.stage=wheels
COPY client/ client/
COPY server/ server/
RUN pip wheel --no-deps --wheel-dir /wheels ./client ./server


FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="rnnserve-server" \
      org.opencontainers.image.description="Stateful gRPC serving of RNN and GRU models on onnxruntime" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN useradd --no-log-init --uid 10001 --user-group --shell /usr/sbin/nologin \
        --home-dir /home/rnnserve --create-home rnnserve \
    && mkdir -p /models \
    && chown rnnserve:rnnserve /models

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RNNSERVE_MODELS=/models \
    RNNSERVE_HOST=0.0.0.0 \
    RNNSERVE_PORT=50051

COPY --from=deps /opt/venv /opt/venv
COPY --from=wheels /wheels /tmp/wheels
RUN pip install --no-deps --no-index /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && python -c "import rnnserve, rnnserve_server"

# The rnnserve user created above, by number so that hosts and Kubernetes can check it is not root.
USER 10001:10001
WORKDIR /home/rnnserve
# /models: the model repository, mounted (read-only is enough) from the trainer's volume or
# the host.
EXPOSE 50051

# The standard gRPC health service: `rnnserve health` exits 0 only while it says SERVING.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/bin/sh", "-c", "exec rnnserve health --address 127.0.0.1:${RNNSERVE_PORT} --timeout 3"]

# Configured through RNNSERVE_* above; flags given to `docker run IMAGE ...` are passed on.
ENTRYPOINT ["rnnserve-server"]
