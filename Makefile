PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo lint clean triton-compat gpu-check

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/onetok demo --out runs/demo $(if $(FRESH),--fresh,)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The kernel tests and the sm_80/sm_90 compile tests under another Triton (default: 3.6, the GPU image's), installed
# once into a cache folder (~650 MB) beside numpy < 2.4 (the interpreter of Triton < 3.8 needs it). Not in `make test`.
TRITON_COMPAT ?= 3.6.0
TRITON_COMPAT_DIR ?= $(HOME)/.cache/onetok/triton-$(TRITON_COMPAT)

triton-compat: $(STAMP)
	test -f $(TRITON_COMPAT_DIR)/.complete || { $(PY) -m pip install -q --upgrade --no-deps --target \
		$(TRITON_COMPAT_DIR) "triton==$(TRITON_COMPAT)" "numpy<2.4" && touch $(TRITON_COMPAT_DIR)/.complete; }
	PYTHONPATH=$(TRITON_COMPAT_DIR) $(PY) -m pytest -q -ra -p no:cacheprovider tests/test_kernel_compile.py \
		tests/test_kernels.py

# The prepared GPU check (scripts/gpu_check.sh): OUT=folder (default runs/gpu_check), DRY=1 on CPU at toy sizes,
# MODEL=a unified model folder. Needs no install: the venv's python when there is one, else python3.
gpu-check:
	PYTHON=$(if $(wildcard $(PY)),$(PY),$(PYTHON)) bash scripts/gpu_check.sh $(or $(OUT),runs/gpu_check) \
		$(if $(DRY),--dry-run) $(if $(MODEL),--model $(MODEL))

clean:
	rm -rf $(VENV) runs lightning_logs .pytest_cache
