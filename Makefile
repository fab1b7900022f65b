# The two commands of the README: `make demo` (the main job) and `make test`.
# Both create .venv and install what they need on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY = 1
PYTEST_ARGS ?= -n 2

.PHONY: install test lint demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install_torch.sh
	test -x $(PY) || python3 -m venv $(VENV)
	bash scripts/install_torch.sh $(PY)
	$(PY) -m pip install -q -e ".[dev,demo,eval]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# Train a tiny VAE and a latent UNet on the built-in digits (~3 min on 2 CPU cores), sample with every sampler, evaluate.
# Extra options: make demo DEMO_ARGS="--reuse" (see python -m scratch_diffusion.demo --help).
DEMO_ARGS ?=
demo: $(STAMP)
	$(PY) -m scratch_diffusion.demo --output_dir outputs/demo $(DEMO_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_schedulers.py
	$(PY) benchmarks/bench_pipeline.py
	$(PY) benchmarks/bench_training.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
