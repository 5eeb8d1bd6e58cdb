PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo lint clean triton-compat gpu-check photo-codec cifar-model

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

# Retrain the built-in natural-image model from ../shared/data/cifar10/train on 2 CPU cores: the tokenizer
# (configs/tokenizer/cifar10.yaml), the ids of every training image and its mirror image, the subword text vocabulary
# (trained on the caption templates of configs/ar/cifar10.yaml), the unified model (configs/ar/cifar10.yaml) and the
# judge classifier; the result replaces ar_model/pretrained/cifar10 (CIFAR_OUT to put it elsewhere), then its val
# numbers are printed. Budget and measured times: ar_model/pretrained/cifar10/README.md.
CIFAR_DATA ?= ../shared/data/cifar10
CIFAR_RUNS ?= runs/cifar10_model
CIFAR_OUT ?= ar_model/pretrained/cifar10
CIFAR_JUDGE ?= ar_model/pretrained/judge_cifar10
CIFAR_JUDGE_EPOCHS ?= 4
# the unified model: the config's 2000 steps (the <= 75-minute recipe ends there), then resumed to each step count of
# CIFAR_AR_STEPS in turn (each run's cosine schedule stretched to its new end), as the shipped model was trained (model
# card: every stage measured); CIFAR_AR_STEPS= (empty) stops at step 2000. The resumed stages run without the config's
# max_time: Lightning's Timer restores the time of every earlier run from the checkpoint, so a cap would cut a later
# stage short and the loop would go on from where it stopped; each stage's step count ends it
CIFAR_AR_STEPS ?= 5000 9000 12000
CIFAR_AR_DATA = --data.init_args.tokens $(CIFAR_RUNS)/tokens --data.init_args.text_vocab $(CIFAR_RUNS)/text_vocab \
	--model.init_args.tokenizer_dir $(CIFAR_RUNS)/tokenizer_only

cifar-model: $(STAMP)
	rm -rf $(CIFAR_RUNS)
	$(TRAIN) fit --config configs/tokenizer/cifar10.yaml --trainer.default_root_dir $(CIFAR_RUNS)/tokenizer \
		--data.init_args.train_shards $(CIFAR_DATA)/train --data.init_args.val_shards $(CIFAR_DATA)/val
	$(ONETOK) export $(CIFAR_RUNS)/tokenizer/lightning_logs/version_0/checkpoints/last.ckpt \
		--out $(CIFAR_RUNS)/tokenizer_only --no-register
	$(ONETOK) tokenize --tokenizer $(CIFAR_RUNS)/tokenizer_only --data $(CIFAR_DATA) --out $(CIFAR_RUNS)/tokens \
		--flip --quiet
	$(ONETOK) text-vocab train --captions $(CIFAR_DATA) --templates configs/ar/cifar10.yaml --size 512 \
		--out $(CIFAR_RUNS)/text_vocab --quiet
	$(TRAIN) fit --config configs/ar/cifar10.yaml --trainer.default_root_dir $(CIFAR_RUNS)/ar $(CIFAR_AR_DATA)
	last=$(CIFAR_RUNS)/ar; for steps in $(CIFAR_AR_STEPS); do \
		$(TRAIN) fit --config configs/ar/cifar10.yaml --trainer.default_root_dir $(CIFAR_RUNS)/ar_$$steps \
			--trainer.max_steps $$steps --trainer.max_time null --ckpt_path $$last/lightning_logs/version_0/checkpoints/last.ckpt \
			$(CIFAR_AR_DATA) || exit 1; \
		last=$(CIFAR_RUNS)/ar_$$steps; \
	done; \
	$(ONETOK) export $$last/lightning_logs/version_0/checkpoints/last.ckpt --out $(CIFAR_RUNS)/model \
		--tokenizer $(CIFAR_RUNS)/tokenizer_only
	$(ONETOK) judge train --data $(CIFAR_DATA) --out $(CIFAR_RUNS)/judge --epochs $(CIFAR_JUDGE_EPOCHS)
	cp $(CIFAR_OUT)/README.md $(CIFAR_RUNS)/model/ 2>/dev/null || true
	cp $(CIFAR_JUDGE)/README.md $(CIFAR_RUNS)/judge/ 2>/dev/null || true
	rm -rf $(CIFAR_OUT) && cp -r $(CIFAR_RUNS)/model $(CIFAR_OUT)
	rm -rf $(CIFAR_JUDGE) && cp -r $(CIFAR_RUNS)/judge $(CIFAR_JUDGE)
	$(ONETOK) eval-ar --model $(CIFAR_OUT) --data $(CIFAR_DATA)/val --n 5000 --judge $(CIFAR_JUDGE)

clean:
	rm -rf $(VENV) runs lightning_logs .pytest_cache
