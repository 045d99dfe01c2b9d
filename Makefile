# longshot: every target installs the virtual environment first if it is missing, so a fresh
# machine needs nothing but `make demo` or `make test`. Variables below can be set on the
# command line, e.g. `make preprocess MANIFEST=videos.jsonl DATA=/data/ds1`.

SHELL := /bin/bash
.DEFAULT_GOAL := help

# Python 3.12: found on PATH or in pyenv; override with PYTHON_SYS=/path/to/python3.12
PYTHON_SYS ?= $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12 \
	/usr/local/bin/python3.12 /usr/bin/python3.12; do \
	if $$p -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then echo $$p; break; fi; done)
VENV ?= .venv
PY := $(VENV)/bin/python
LONGSHOT := $(VENV)/bin/longshot
STAMP := $(VENV)/.installed

## Inputs and outputs
DEMO_DIR ?= runs/demo#                  where `make demo` puts everything
MANIFEST ?= $(DEMO_DIR)/videos/manifest.jsonl#  JSONL: {"id", "video", "text" | "conversations"}
TOKENIZER ?= $(DEMO_DIR)/tokenizer.json#  a HuggingFace tokenizer.json
DATA ?= $(DEMO_DIR)/dataset#            dataset folder written by preprocess (shards, index, stats)
PACKS ?= $(DATA)/packs#                 pack plan written by `make pack`
SEQ_LEN ?= 262144#                       tokens per packed sequence (and per-sample budget)
PREPROCESS_ARGS ?=#                      extra preprocess flags, e.g. --fps 1 --max-pixels 200704
FRAME_CODEC ?= zstd#                     how preprocess stores frames: zstd (lossless) | jpeg (lossy, 5-10x smaller)
JPEG_QUALITY ?= 93#                      JPEG quality 1-100 when FRAME_CODEC=jpeg
SEED ?= 0#                               packing and data order seed
KEY ?=#                                  sample key for `make show`
RUN ?= $(DEMO_DIR)/train#               training run folder (checkpoints, metrics)
PRESET ?= tiny#                          model preset: tiny | small | keye-30b-a3b
STEPS ?= 20#                             training steps
## Execution
EXECUTOR ?= ray#                         ray | inprocess
RAY_ADDRESS ?=#                          join an existing Ray cluster, e.g. 10.0.0.1:6379
WORKERS ?=#                              CPUs for a local Ray (default: all cores)
FORCE ?=#                                set to 1 to start a step over after a config change
TESTS ?= tests#                          what `make test` runs
PYTEST_ARGS ?=#                          extra pytest arguments
TRAIN_ARGS ?=#                           extra train flags, e.g. --attention dsa --dsa-warmup-steps 10

HELP_VARS := DEMO_DIR MANIFEST TOKENIZER DATA PACKS SEQ_LEN PREPROCESS_ARGS FRAME_CODEC JPEG_QUALITY SEED KEY RUN PRESET STEPS TRAIN_ARGS EXECUTOR RAY_ADDRESS \
	WORKERS FORCE TESTS PYTEST_ARGS PYTHON_SYS
RUN_OPTS = --executor $(EXECUTOR) $(if $(RAY_ADDRESS),--ray-address $(RAY_ADDRESS)) \
	$(if $(WORKERS),--workers $(WORKERS)) $(if $(FORCE),--force)

.PHONY: help install demo test bench preprocess stats verify show pack train resume status clean clean-all

help: ## list targets and variables
	@echo "longshot: long-video VLM training. Targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo "Variables (set on the command line, e.g. make preprocess DATA=/data/ds1):"
	@$(foreach v,$(HELP_VARS),printf "  %-11s = %-36s %s\n" '$(v)' '$($(v))' \
		"$$(grep -E '^$(v) \?=' $(MAKEFILE_LIST) | sed -E 's/^[^#]*#? *//')";)

$(STAMP): pyproject.toml
	@test -n "$(PYTHON_SYS)" || { echo "Python 3.12 not found: install it or set PYTHON_SYS=/path/to/python3.12"; exit 1; }
	@test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv with Python 3.12 and install longshot (idempotent)

test: $(STAMP) ## run the test suite (CPU only; kernels under TRITON_INTERPRET=1)
	$(PY) -m pytest -q $(TESTS) $(PYTEST_ARGS)

preprocess: $(STAMP) ## probe, budget, decode and shard MANIFEST into DATA (resumable)
	$(LONGSHOT) preprocess --manifest $(MANIFEST) --tokenizer $(TOKENIZER) --out $(DATA) \
		--max-seq-tokens $(SEQ_LEN) --frame-codec $(FRAME_CODEC) --jpeg-quality $(JPEG_QUALITY) \
		$(PREPROCESS_ARGS) $(RUN_OPTS)

stats: $(STAMP) ## statistics of DATA: table, stats.parquet, PNG histograms
	$(LONGSHOT) stats $(DATA)

verify: $(STAMP) ## check every shard of DATA against its index and checksums
	$(LONGSHOT) verify $(DATA)

show: $(STAMP) ## contact sheet PNG of sample KEY of DATA: its stored frames, timestamps, trained text spans
	@test -n "$(KEY)" || { echo "set KEY=, e.g. make show DATA=$(DATA) KEY=some_id"; exit 2; }
	$(LONGSHOT) show $(DATA) $(KEY) $(if $(wildcard $(TOKENIZER)),--tokenizer $(TOKENIZER))

# The demo runs on the CPU in a few minutes: short sequences, small frames, a tiny model.
DEMO_SEQ_LEN ?= 2048
DEMO_PREPROCESS = --fps 1 --min-fps 0.5 --max-pixels 25088 --min-pixels 3136 --shard-mb 4
DEMO_TRAIN = --attention dsa --dsa-warmup-steps 10 --lr 2e-3 --lr-warmup-steps 5 --save-every 10

demo: $(STAMP) ## the whole mission on real sample videos (an hour-long one included), on the CPU
	$(LONGSHOT) demo-inputs --out $(DEMO_DIR)
	$(MAKE) --no-print-directory preprocess MANIFEST=$(DEMO_DIR)/videos/manifest.jsonl \
		TOKENIZER=$(DEMO_DIR)/tokenizer.json DATA=$(DEMO_DIR)/dataset SEQ_LEN=$(DEMO_SEQ_LEN) \
		PREPROCESS_ARGS="$(DEMO_PREPROCESS)"
	$(LONGSHOT) verify $(DEMO_DIR)/dataset
	$(MAKE) --no-print-directory pack DATA=$(DEMO_DIR)/dataset SEQ_LEN=$(DEMO_SEQ_LEN)
	$(MAKE) --no-print-directory train DATA=$(DEMO_DIR)/dataset TOKENIZER=$(DEMO_DIR)/tokenizer.json \
		RUN=$(DEMO_DIR)/train PRESET=tiny STEPS=$(or $(DEMO_STEPS),40) TRAIN_ARGS="$(DEMO_TRAIN)"

pack: $(STAMP) ## assign every sample of DATA to a SEQ_LEN-token sequence (writes PACKS)
	$(LONGSHOT) pack $(DATA) --out $(PACKS) --seq-len $(SEQ_LEN) --seed $(SEED) $(if $(FORCE),--force)

train: $(STAMP) ## train PRESET on the packs of DATA into RUN (resumes if RUN has checkpoints)
	$(LONGSHOT) train --run $(RUN) --data $(DATA) --packs $(PACKS) --tokenizer $(TOKENIZER) \
		--preset $(PRESET) --steps $(STEPS) $(TRAIN_ARGS) $(if $(FORCE),--force)

resume: $(STAMP) ## continue the run in RUN from its latest checkpoint, same config
	$(LONGSHOT) resume $(RUN)

bench: $(STAMP) ## CPU benchmarks (encode, loader, frames codec); GPU ones: see tests/bench/README
	$(PY) tests/bench/bench_encode.py
	$(PY) tests/bench/bench_loader.py
	$(PY) tests/bench/bench_frame_storage.py

status: $(STAMP) ## show the state of every job under DATA (or DIR=folder)
	$(LONGSHOT) status $(or $(DIR),$(DATA))

clean: ## remove the demo run folder and caches (not the venv; `make clean-all` for that)
	rm -rf $(DEMO_DIR) .pytest_cache .hypothesis
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +

clean-all: clean ## also remove the virtual environment
	rm -rf $(VENV)
