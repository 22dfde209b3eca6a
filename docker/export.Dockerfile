# syntax=docker/dockerfile:1
# The exporter: `qwen3-embed export` (checkpoint -> verified ONNX -> Triton model repository), with
# PyTorch and the `export` extra. Used by the Helm chart's export Job.
#
#   docker build -f docker/export.Dockerfile -t qwen3-embedding-export .      (from the repository root)
#
# TORCH_INDEX_URL empty = PyPI's default Linux build (CUDA). CPU only:
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# `--backend tensorrt` also needs `trtexec`: build FROM an NGC TensorRT image for that.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --upgrade pip \
 && if [ -n "$TORCH_INDEX_URL" ]; then pip install --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"; \
    else pip install "$TORCH_SPEC"; fi
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY export ./export
# The wheel holds service/ only: the exporter's package (templates included) goes beside it in the venv,
# where the `qwen3_embed.cli` entry point finds it. The --help run proves `qwen3-embed export` registered.
RUN pip install ".[export]" \
 && cp -r export "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/" \
 && pip check \
 && qwen3-embed export --help > /dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="qwen3-embedding-export" \
      org.opencontainers.image.description="Exports Qwen3-Embedding checkpoints to a verified Triton model repository"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_DISABLE_TELEMETRY=1
RUN groupadd --gid 1000 app \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/app --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
USER 1000:1000
WORKDIR /home/app
ENTRYPOINT ["qwen3-embed", "export"]
