# distree images. Two targets:
#   docker build --target board -t distree:board .   # a board's worker or coordinator: onnxruntime on an export, no torch
#   docker build --target full -t distree:full .     # everything: torch coordinator and workers, training, export
# deploy/compose.yaml builds the board image; docs/deploy.md says how to run them.
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/distree
COPY pyproject.toml README.md ./
COPY src ./src
RUN useradd --system --uid 10001 --no-create-home distree

FROM base AS board
# "." is distree itself, from this checkout; its dependencies are ranges (pyproject.toml).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[onnx]"
USER 10001
EXPOSE 50061 9100
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s CMD ["distree", "health", "127.0.0.1:50061"]
ENTRYPOINT ["distree"]
CMD ["worker", "/export", "--backend", "onnxruntime", "--branch", "0", "--listen", "0.0.0.0:50061"]

FROM base AS full
# The CPU build of torch first: the extras below would otherwise pull in the CUDA build.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && pip install --no-cache-dir ".[all]"
USER 10001
EXPOSE 50051 50061 9100
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s CMD ["distree", "health", "127.0.0.1:50051"]
ENTRYPOINT ["distree"]
CMD ["--help"]
