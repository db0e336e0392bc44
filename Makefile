# Entry points for a newcomer and for CI (.ci/run calls `make test`).
# Every target bootstraps first; bootstrap is idempotent and fast when done.
PYTHON := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: bootstrap test demo demo-authority bench

bootstrap:
	bash scripts/bootstrap.sh

test: bootstrap
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)

demo: bootstrap
	$(PYTHON) -m hessra_pg.dev.demo

# The seeds' flow with a local Hessra authority (hessra_py, keys sync, rotation).
demo-authority: bootstrap
	$(PYTHON) -m hessra_pg.dev.demo --authority

bench: bootstrap
	$(PYTHON) -m pip install -q -e '.[bench]'
	$(PYTHON) benchmarks/bench_verify.py
	$(PYTHON) benchmarks/bench_perf.py
