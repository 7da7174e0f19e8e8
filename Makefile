# chameleon-serve: `make serve` starts the server on the embedded tiny model; `make test` runs the suite.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
PORT    ?= 8000
# vLLM's CPU KV cache size in GiB; small so tests and the tiny model fit anywhere.
export VLLM_CPU_KVCACHE_SPACE ?= 1

.PHONY: install serve test lint bench clean

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
