# The two commands the README promises: `make demo` (main job on the embedded default) and
# `make test` (the test suite). Both run set-up first; set-up is idempotent.
.PHONY: setup demo test lint tiny clean bench reproduce

PY := .venv/bin/python
XOPD := .venv/bin/xopd

setup:
	@bash scripts/setup.sh

demo: setup
	$(XOPD) demo

tiny: setup
	$(XOPD) train --config configs/tiny.yaml --output_dir runs/tiny

test: setup
	$(PY) -m pytest tests

lint: setup
	.venv/bin/ruff check src tests

reproduce: setup
	$(XOPD) reproduce

bench: setup
	$(XOPD) bench

clean:
	rm -rf runs
