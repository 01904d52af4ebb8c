# rnnserve trainer image: trains a preset with torch (CPU build only) and writes the model
# package into the model repository at /models, unless that model is already there.
#
#   bash docker/fetch-torch-wheel.sh          # optional: puts the CPU wheel into docker/wheels/
#   docker build -f docker/trainer.Dockerfile -t rnnserve-trainer \
#       --build-arg TORCH_WHEEL=torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl .
#   docker run --rm -v rnnserve_models:/models -e RNNSERVE_TRAIN_PRESET=tiny rnnserve-trainer
#
# Build context: the repository root. torch comes either from a wheel in docker/wheels/ (build
# arg TORCH_WHEEL, for machines that cannot reach PyTorch's CPU index) or, with TORCH_WHEEL
# empty, from that CPU index. Never from PyPI: PyPI's torch for Linux is the multi-GB CUDA build.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS deps
# Build stages carry this label so that superseded ones can be pruned by it (tests/docker).
LABEL org.rnnserve.stage=deps
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# torch first and spelled exactly, so nothing later can pull another build of it. The wheels
# stay in this stage: the runtime stage copies only the installed environment.
ARG TORCH_WHEEL=""
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY docker/wheels/ /tmp/wheels/
# DL3013: the wheel file is the pin (the check after the install asserts torch 2.13.0, CPU).
# hadolint ignore=DL3013
RUN if [ -n "$TORCH_WHEEL" ]; then \
        wheel="/tmp/wheels/${TORCH_WHEEL##*/}"; \
        [ -f "$wheel" ] || { echo "TORCH_WHEEL: no $wheel; put the wheel into docker/wheels/" >&2; exit 1; }; \
        pip install "$wheel"; \
    else \
        pip install --index-url "$TORCH_INDEX_URL" torch==2.13.0; \
    fi \
    && python -W ignore::UserWarning -c "import torch; assert torch.__version__.startswith('2.13.0') and torch.version.cuda is None, (torch.__version__, torch.version.cuda)"

# Then the other third-party dependencies, in a layer that changes only with the pyproject
# files. The installed torch satisfies training's `torch==2.13.0`, so pip keeps it.
COPY docker/pyproject-deps.py docker/
COPY client/pyproject.toml client/
COPY server/pyproject.toml server/
COPY training/pyproject.toml training/
RUN python docker/pyproject-deps.py client/pyproject.toml server/pyproject.toml \
        training/pyproject.toml > requirements.txt \
    && pip install --requirement requirements.txt \
    && python -c "import torch; assert torch.version.cuda is None, torch.version.cuda"


FROM deps AS wheels
LABEL org.rnnserve.stage=wheels
COPY client/ client/
COPY server/ server/
COPY training/ training/
RUN pip wheel --no-deps --wheel-dir /wheels ./client ./server ./training


FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="rnnserve-trainer" \
      org.opencontainers.image.description="Trains rnnserve RNN and GRU models (torch, CPU) into a model repository" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN useradd --no-log-init --uid 10001 --user-group --shell /usr/sbin/nologin \
        --home-dir /home/rnnserve --create-home rnnserve \
    && mkdir -p /models /runs \
    && chown rnnserve:rnnserve /models /runs

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLBACKEND=Agg \
    RNNSERVE_TRAIN_PRESET=char-gru \
    RNNSERVE_TRAIN_OUT=/models \
    RNNSERVE_TRAIN_RUNS=/runs

# The environment changes only with the dependencies; the project's wheels on top are small.
COPY --from=deps /opt/venv /opt/venv
COPY --from=wheels /wheels /tmp/wheels
RUN pip install --no-deps --no-index /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && python -c "import rnnserve, rnnserve_server, rnnserve_train"
COPY docker/train-once.py /usr/local/bin/rnnserve-train-once

# rnnserve (10001), the server image's user too, so the server reads what this writes. A new
# named volume mounted at /models takes this folder's owner, so the trainer can write it.
USER 10001:10001
WORKDIR /home/rnnserve

# docker/train-once.py: trains RNNSERVE_TRAIN_PRESET into /models (the model repository; runs,
# with checkpoints and loss plots, into /runs) unless the model is already there, like
# `make models`; RNNSERVE_TRAIN_FORCE=1 trains a new version. Arguments (`--key=value`) are
# passed on to `rnnserve-train`.
ENTRYPOINT ["rnnserve-train-once"]
# rnnserve-train runs as PID 1, where SIGTERM's default action does not apply; Python turns
# SIGINT into KeyboardInterrupt, so `docker stop` ends a run at once instead of in 10 s.
STOPSIGNAL SIGINT
