STAMP := .setup.stamp
# The interpreter scripts/setup.sh chose and wrote into the stamp: python3, or the project's
# .venv when python3 is externally managed (PEP 668), or $(PYTHON) when given
# (`make demo PYTHON=/path/to/python`; `rm .setup.stamp` to choose again).
PY = $(or $(shell cat $(STAMP) 2>/dev/null),python3)

.PHONY: setup demo test lint bench

$(STAMP): pyproject.toml scripts/setup.sh
	PYTHON="$(PYTHON)" STAMP="$(STAMP)" bash scripts/setup.sh

setup: $(STAMP)

## The main job: pretrain a tiny ViT with MAE on Fashion-MNIST, print kNN top-1 (pretrained
## and random init), write a reconstruction image. Under 10 minutes on a 2-core CPU.
demo: $(STAMP)
	$(PY) -m mimkit.cli pretrain configs/fmnist_mae_tiny.yaml --no-resume $(ARGS)

## The test suite (under 15 minutes on a 2-core CPU).
test: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest $(ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_cpu_step.py
