# chameleon-serve: `make serve` starts the server on the embedded tiny model; `make test` runs the suite.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
PORT    ?= 8000
# vLLM's CPU KV cache size in GiB; small so tests and the tiny model fit anywhere.
export VLLM_CPU_KVCACHE_SPACE ?= 1

.PHONY: install serve test lint bench clean wheelhouse image-base image wheelhouse-gpu image-base-gpu image-gpu

install: $(VENV)/.installed

# GPU build where nvidia-smi works, else the CPU build. The CPU build pulls torchvision,
# torchaudio and torchcodec, which fail to import beside the CPU torch and then break
# transformers' Chameleon: they are removed after every install.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	if nvidia-smi >/dev/null 2>&1; then \
		$(PIP) install -e '.[gpu,test]'; \
	else \
		$(PIP) install -e '.[cpu,test]' && $(PIP) uninstall -y -q torchvision torchaudio torchcodec; \
	fi
	touch $@

serve: install
	$(VENV)/bin/chameleon-serve --port $(PORT)

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check engine server schemas tests bench

# The whole side-by-side comparison (~15-20 min on 2 cores); figures in bench/out/, recorded in bench/RESULTS.md.
bench: install
	$(PIP) install -q -e '.[bench]'
	$(PY) bench/compare.py --out bench/out

clean:
	rm -rf $(VENV)

# Container images (docker/Dockerfile). Built from a wheelhouse made here on the host, so the build needs no
# network inside: the same path serves air-gapped sites (copy build/wheelhouse/cpu over, run `make image`).
# The CPU torch comes from the host pip's configuration (on other machines: PIP_EXTRA_INDEX_URL=
# https://download.pytorch.org/whl/cpu). DOCKER_BUILDKIT=0: the legacy builder, present in every client.
DOCKER     ?= docker
CPU_BASE   ?= debian:bookworm-slim
WHEELHOUSE := build/wheelhouse
BUILD_IMAGE = DOCKER_BUILDKIT=0 $(DOCKER) build --force-rm -f docker/Dockerfile
# The legacy builder keeps every stage's layers, and a rebuild untags the previous image: a few GB a build.
# Dangling images carrying the Dockerfile's label are removed after each build.
PRUNE_IMAGES = $(DOCKER) image prune -f --filter label=org.opencontainers.image.title=chameleon-serve
# Any Python with pip does (the image's Python for the CPU flavour: 3.11, Debian bookworm's).
WHEEL_PIP  ?= $(if $(wildcard $(PY)),$(PY),python3) -m pip

# Dependencies are resolved once per pyproject.toml, reusing the wheels already there (PIP_NO_INDEX=1: from
# them alone, offline); the project's own wheel is rebuilt every time.
$(WHEELHOUSE)/cpu/.deps: pyproject.toml
	mkdir -p $(WHEELHOUSE)/cpu
	$(WHEEL_PIP) wheel -q --find-links $(WHEELHOUSE)/cpu -w $(WHEELHOUSE)/cpu '.[cpu]'
	touch $@

wheelhouse: $(WHEELHOUSE)/cpu/.deps
	$(WHEEL_PIP) wheel -q --find-links $(WHEELHOUSE)/cpu --no-deps -w $(WHEELHOUSE)/cpu .

# The FROM image first, before the wheelhouse: without a registry it is made from Debian's packages by
# docker/make-base.sh, which needs debootstrap and says so before doing any work.
image-base:
	$(DOCKER) image inspect $(CPU_BASE) >/dev/null 2>&1 || DOCKER=$(DOCKER) docker/make-base.sh $(CPU_BASE)

image: image-base wheelhouse
	$(BUILD_IMAGE) --build-arg FLAVOUR=cpu --build-arg BASE=$(CPU_BASE) \
		-t chameleon-serve:cpu $(WHEELHOUSE)/cpu
	$(PRUNE_IMAGES)

# GPU flavour. Its base, where no registry is reachable, is made here by docker/make-base.sh: Debian bookworm
# (Python 3.11) with the NVIDIA container toolkit's environment. Where one is, nvidia/cuda's base (Ubuntu 24.04,
# Python 3.12) does as well: make image-gpu GPU_BASE=nvidia/cuda:13.0.3-base-ubuntu24.04 GPU_PYTHON=3.12
# WHEEL_PIP='python3.12 -m pip'. Either way the CUDA libraries come as wheels with torch. Not built in CI.
MADE_GPU_BASE := debian-nvidia:bookworm
GPU_BASE   ?= $(MADE_GPU_BASE)
GPU_PYTHON ?= 3.11
# Wheels for the image's Python and glibc (2.36 and older: bookworm has 2.36, Ubuntu 24.04 2.39), whatever the host
# has; pip does not widen a --platform to older manylinux tags by itself. It does evaluate environment markers
# (vllm's `six; python_version > "3.11"`) with its own Python, whatever --python-version says: WHEEL_PIP must run
# the image's Python version, checked first. --isolated leaves out pip's user configuration and PIP_* variables:
# on CPU machines they point at a CPU torch (2.13.0+cpu satisfies vllm's torch==2.13.0, and wins as the higher
# version), and the CUDA build must come from the index.
GPU_PLATFORMS := $(foreach v,$(shell seq 36 -1 17),--platform manylinux_2_$(v)_x86_64) --platform manylinux2014_x86_64
wheelhouse-gpu:
	$(WHEEL_PIP) --version | grep -q '(python $(GPU_PYTHON))$$' \
		|| { echo "WHEEL_PIP ($(WHEEL_PIP)) must run Python $(GPU_PYTHON), the image's" >&2; exit 1; }
	rm -rf $(WHEELHOUSE)/gpu && mkdir -p $(WHEELHOUSE)/gpu
	$(WHEEL_PIP) wheel -q --no-deps -w $(WHEELHOUSE)/gpu .
	$(WHEEL_PIP) --isolated download -q -d $(WHEELHOUSE)/gpu --find-links $(WHEELHOUSE)/gpu --only-binary=:all: \
		--python-version $(GPU_PYTHON) $(GPU_PLATFORMS) 'chameleon-serve[gpu]'

# Only the made base is made here; any other GPU_BASE is pulled by the build.
image-base-gpu:
	$(if $(filter $(MADE_GPU_BASE),$(GPU_BASE)),$(DOCKER) image inspect $(GPU_BASE) >/dev/null 2>&1 \
		|| FLAVOUR=gpu DOCKER=$(DOCKER) docker/make-base.sh $(GPU_BASE))

image-gpu: image-base-gpu wheelhouse-gpu
	$(BUILD_IMAGE) --build-arg FLAVOUR=gpu --build-arg BASE=$(GPU_BASE) -t chameleon-serve:gpu $(WHEELHOUSE)/gpu
	$(PRUNE_IMAGES)
