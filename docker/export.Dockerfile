# syntax=docker/dockerfile:1
# The exporter: `qwen3-embed export` (checkpoint -> verified ONNX -> Triton model repository), with
# PyTorch and the `export` extra. Used by the Helm chart's export Job.
#
#   docker build -f docker/export.Dockerfile -t qwen3-embedding-export .      (from the repository root)
#
# TORCH_INDEX_URL empty = PyPI's default Linux build (CUDA). CPU only:
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# `--backend tensorrt` also needs `trtexec`: build FROM an NGC TensorRT image for that.
#
# GPU export image (the Helm chart's exportJob.device=gpu, tag <appVersion>-cuda): verification on the GPU
# (fp16 in seconds, bf16 at all: ONNX Runtime has no bf16 CPU kernels) needs onnxruntime-gpu instead of
# onnxruntime, with PyPI's CUDA torch (whose nvidia-* wheels carry the CUDA/cuDNN libraries ORT loads):
#   docker build -f docker/export.Dockerfile --build-arg ORT_PACKAGE=onnxruntime-gpu \
#     -t qwen3-embedding-export:0.1.0-cuda .
# Not built or run on a GPU in this repository's CI; the node needs an NVIDIA driver for CUDA 12.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX_URL=""
# onnxruntime (CPU) or onnxruntime-gpu; both install the `onnxruntime` module, so only one may be present.
ARG ORT_PACKAGE="onnxruntime"
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
 && if [ "$ORT_PACKAGE" != "onnxruntime" ]; then \
      pip uninstall -y onnxruntime && pip install "$ORT_PACKAGE>=1.18"; \
    fi \
 && cp -r export "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/" \
 && { pip check || [ "$ORT_PACKAGE" != "onnxruntime" ]; } \
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
