# The README's two commands: `make demo` and `make test`. Both set up first: a local
# virtual environment (unless one is active), torch installed on its own, then the
# project with its extras. Torch is pinned to whatever is installed, so nothing here
# ever replaces a CPU or CUDA build the user chose.
SHELL := /bin/bash
VENV ?= .venv
TORCH ?= torch==2.13.0
ifdef VIRTUAL_ENV
PYTHON := python
ENV_DIR := $(VIRTUAL_ENV)
else
PYTHON := $(VENV)/bin/python
ENV_DIR := $(VENV)
endif
STAMP := $(ENV_DIR)/.selfmem-installed
TORCHRUN := $(PYTHON) -m torch.distributed.run
DEMO := configs/demo.yaml
# test files run in parallel, each whole on one worker (module-scoped fixtures build runs once)
TEST_WORKERS ?= 2

# configs/demo.yaml without its shipped checkpoints, and how they were trained: 70 epochs, the
# first 8 on each example's own reference as its memory (so that the tiny model learns to copy),
# with the no-memory twin beside it and no rounds
DEMO_FROM_SCRATCH := run.name=demo_pretrain tokenizer.path=null generator.init=null lift.no_memory_init=null \
	generator.copy_epochs=8 train.max_epochs=70 train.patience=1000 train.max_tokens=2048 lift.max_rounds=0

.PHONY: setup demo demo-checkpoints test bench

setup: $(STAMP)

$(STAMP): pyproject.toml
	@[ -n "$(VIRTUAL_ENV)" ] || [ -x $(VENV)/bin/python ] || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q "$(TORCH)"
	$(PYTHON) -W ignore -c "import torch; print('torch==' + torch.__version__)" > $(ENV_DIR)/torch-constraint.txt
	$(PYTHON) -m pip install -q -c $(ENV_DIR)/torch-constraint.txt -e ".[fast,es,plot,test,bench]"
	touch $@

demo: setup
	$(TORCHRUN) --standalone --nproc_per_node 2 launch/lift.py --config $(DEMO)

# retrain data/demo/pretrained/ (about 40 minutes on 2 cores), then `git diff --stat` shows what changed
demo-checkpoints: setup
	$(TORCHRUN) --standalone --nproc_per_node 2 launch/lift.py --config $(DEMO) $(DEMO_FROM_SCRATCH)
	$(PYTHON) data/pack_checkpoints.py runs/demo_pretrain data/demo/pretrained

test: setup
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

bench: setup
	$(PYTHON) bench/bm25.py
