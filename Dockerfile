FROM python:3.11-slim
WORKDIR /app
# Pick the torch build for the target (CPU wheel by default; a CUDA wheel for GPU hosts);
# the default is the Makefile's TORCH.
ARG TORCH=torch==2.13.0
RUN pip install --no-cache-dir "${TORCH}"
COPY pyproject.toml README.md ./
COPY models ./models
COPY service ./service
# The server with every backend (the gRPC code is generated and committed, nothing compiles).
# EXTRAS=serve,gpu (say) leaves the onnxruntime, Triton and Redis clients out.
ARG EXTRAS=serve,onnx,triton,redis,gpu
RUN pip install --no-cache-dir ".[${EXTRAS}]"
# Serve as an unprivileged user (the installed package and models are read-only to it).
RUN useradd --system --uid 10001 --no-create-home --home-dir /nonexistent rewardserve
USER 10001
ENV REWARDSERVE_SERVER__HOST=0.0.0.0 \
    HF_HUB_OFFLINE=1 \
    HF_HOME=/tmp/huggingface
EXPOSE 8000 50051
HEALTHCHECK --interval=10s --start-period=60s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/ready')"
CMD ["rewardserve", "serve"]
