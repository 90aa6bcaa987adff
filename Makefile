PYTHON ?= python3
STAMP := .setup.stamp

.PHONY: setup demo test lint bench

$(STAMP): pyproject.toml scripts/setup.sh
	PYTHON=$(PYTHON) bash scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)

## The main job: pretrain a tiny ViT with MAE on Fashion-MNIST, print kNN top-1 (pretrained
## and random init), write a reconstruction image. Under 10 minutes on a 2-core CPU.
demo: $(STAMP)
	$(PYTHON) -m mimkit.cli pretrain configs/fmnist_mae_tiny.yaml --no-resume

## The test suite (under 15 minutes on a 2-core CPU).
test: $(STAMP)
	$(PYTHON) -m ruff check src tests benchmarks
	$(PYTHON) -m pytest

bench: $(STAMP)
	$(PYTHON) benchmarks/bench_cpu_step.py
