# The two commands of the README: `make demo` (the main job) and `make test`.
# Both create .venv and install what they need on first use: the dependency versions CI last
# passed with (constraints.txt, made by `make lock`), torch chosen by scripts/install_torch.sh.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS := dev,demo,eval,docs
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY = 1
# worksteal: each worker starts on one contiguous half of the suite and takes work from the other's end only when
# it runs out, so a module's tests stay on one worker and its module- and session-scoped fixtures (the demo's quick
# runs, the trained tiny UNets) are built once, not once per worker as `load`'s round-robin handed them out.
PYTEST_ARGS ?= -n 2 --dist worksteal

.PHONY: install test test-latest lint lock demo bench docs docs-serve clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/install_torch.sh
	test -x $(PY) || python3 -m venv $(VENV)
	bash scripts/install_torch.sh $(PY)
	$(PY) -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

# The whole suite, then the numerics-sensitive tests (scheduler parity, few-step accuracy, exact
# answers) once more on PyTorch's portable kernels, so a tolerance tuned to one SIMD path fails here.
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q $(PYTEST_ARGS) tests
	ATEN_CPU_CAPABILITY=default $(PY) -m pytest -q $(PYTEST_ARGS) -m numerics tests

# The suite against the newest releases inside pyproject.toml's ranges, in its own environment:
# an upgrade is a deliberate, tested step (then `make lock` and commit constraints.txt).
LATEST_VENV ?= .venv-latest
test-latest:
	test -x $(LATEST_VENV)/bin/python || python3 -m venv $(LATEST_VENV)
	bash scripts/install_torch.sh $(LATEST_VENV)/bin/python
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade -e ".[$(EXTRAS)]"
	$(LATEST_VENV)/bin/python -m pip freeze --exclude-editable > $(LATEST_VENV)/versions.txt
	$(LATEST_VENV)/bin/python -m pytest -q $(PYTEST_ARGS) tests

# Re-resolve constraints.txt: the newest releases in pyproject.toml's ranges, for every platform and
# Python the package supports, torch pinned to the version scripts/install_torch.sh installs.
lock: $(STAMP)
	$(PY) -m pip install -q "uv>=0.5"
	bash scripts/lock.sh $(PY)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# Train a tiny VAE and a latent UNet on the built-in digits (3-6 min on 2 CPU cores), sample with every sampler, guide,
# edit and control (a ControlNet trained for 300 steps), tune for one to four steps (300 consistency steps), evaluate:
# 12.4 min in all when last measured alone (issue 23; the few-step stage 1.5 min of it).
# Extra options: make demo DEMO_ARGS="--reuse" (see python -m scratch_diffusion.demo --help).
DEMO_ARGS ?=
demo: $(STAMP)
	$(PY) -m scratch_diffusion.demo --output_dir outputs/demo $(DEMO_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_schedulers.py
	$(PY) benchmarks/bench_pipeline.py
	$(PY) benchmarks/bench_training.py

# The documentation site (mkdocs.yml): built strictly to site/, or served with live reload.
docs: $(STAMP)
	$(PY) -m mkdocs build --strict --site-dir site

docs-serve: $(STAMP)
	$(PY) -m mkdocs serve

clean:
	rm -rf $(VENV) $(LATEST_VENV) outputs site .pytest_cache
