PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo lint clean triton-compat gpu-check photo-codec

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

# Retrain the built-in photo codec from ../shared/data/photos/train on 2 CPU cores: the tokenizer (configs/tokenizer/
# photo.yaml, <= 20 min), its post-filter (photo_postfilter.yaml, <= 8 min) and the entropy coder's prior
# (photo_prior.yaml, <= 15 min); the result replaces tokenizers/pretrained/photo (PHOTO_OUT to put it elsewhere).
PHOTO_RUNS ?= runs/photo_codec
PHOTO_OUT ?= tokenizers/pretrained/photo
ONETOK := $(VENV)/bin/onetok
TRAIN := $(VENV)/bin/onetok-train

photo-codec: $(STAMP)
	rm -rf $(PHOTO_RUNS)
	$(TRAIN) fit --config configs/tokenizer/photo.yaml --trainer.default_root_dir $(PHOTO_RUNS)/tokenizer
	$(ONETOK) export $(PHOTO_RUNS)/tokenizer/lightning_logs/version_0/checkpoints/last.ckpt \
		--out $(PHOTO_RUNS)/tokenizer_only --no-register
	$(TRAIN) fit --config configs/tokenizer/photo_postfilter.yaml --trainer.default_root_dir $(PHOTO_RUNS)/postfilter \
		--model.init_args.tokenizer $(PHOTO_RUNS)/tokenizer_only
	$(ONETOK) export $(PHOTO_RUNS)/postfilter/lightning_logs/version_0/checkpoints/last.ckpt --out $(PHOTO_RUNS)/photo \
		--no-register
	$(TRAIN) fit --config configs/tokenizer/photo_prior.yaml --trainer.default_root_dir $(PHOTO_RUNS)/prior \
		--data.init_args.tokenizer $(PHOTO_RUNS)/photo
	$(ONETOK) export $(PHOTO_RUNS)/prior/lightning_logs/version_0/checkpoints/last.ckpt --out $(PHOTO_RUNS)/photo/prior
	rm -rf $(PHOTO_OUT) && cp -r $(PHOTO_RUNS)/photo $(PHOTO_OUT)

clean:
	rm -rf $(VENV) runs lightning_logs .pytest_cache
