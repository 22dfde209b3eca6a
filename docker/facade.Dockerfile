# syntax=docker/dockerfile:1
# The facade: `qwen3-embed serve` (gRPC :50051, OpenAI HTTP + /metrics :8080) in front of a Triton server
# reached with --triton-url / QWEN3_EMBED_TRITON_URL. Base package only: no torch, no ONNX Runtime, no
# bundled Triton (the `serve` extra's nvidia-pytriton and onnxruntime are for running Triton locally), and
# no export/ or devtools/ code (the wheel holds service/ only; their commands register where installed).
#
#   docker build -f docker/facade.Dockerfile -t qwen3-embedding-facade .     (from the repository root)

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
RUN pip install --upgrade pip \
 && pip install . \
 && pip check \
 && qwen3-embed serve --help > /dev/null
# The facade must stay slim: fail the build if a heavy runtime came in through a dependency.
RUN python -c "import importlib.util, sys; heavy = [m for m in ('torch', 'transformers', 'onnxruntime', \
'pytriton', 'export', 'devtools') if importlib.util.find_spec(m)]; \
sys.exit(f'unexpected packages in the facade image: {heavy}' if heavy else 0)"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="qwen3-embedding-facade" \
      org.opencontainers.image.description="gRPC and OpenAI-compatible embedding API in front of Triton"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    QWEN3_EMBED_HOST=0.0.0.0 \
    QWEN3_EMBED_MODEL_REPOSITORY=/models
RUN groupadd --gid 1000 app \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/app --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
USER 1000:1000
WORKDIR /home/app
EXPOSE 50051 8080
ENTRYPOINT ["qwen3-embed", "serve"]
