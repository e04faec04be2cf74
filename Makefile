# mmvid set-up and jobs. `make demo` and `make test` each set everything up first on a fresh machine.
#   TORCH_SPEC   the torch requirement installed before the project (default: the CPU build here)
#   TORCH_INDEX  an extra index for it, e.g. https://download.pytorch.org/whl/cu128 on a GPU machine
#   EXTRAS       the project extras (default dev; "dev,gpu" adds flash-attn)
#   LMMS_EVAL    with dev, the lmms-eval installed without its dependencies for tests/test_lmms_plugin.py (the
#                ones its CLI needs are in dev; all of them pull torchvision and av<16); users: pip install ".[lmms]"
PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
EXTRAS      ?= dev
LMMS_EVAL   ?= lmms-eval==0.7.3
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.mmvid-installed
comma       := ,

.PHONY: setup demo test test-slow test-registry clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(PY) -m pip install -e ".[$(EXTRAS)]"
	$(if $(filter dev,$(subst $(comma), ,$(EXTRAS))),$(PY) -m pip install --no-deps "$(LMMS_EVAL)")
	touch $(STAMP)

demo: setup
	$(PY) -m mmvid.data.shapes --out data/shapes
	$(VENV)/bin/deepspeed train/sft.py
	$(PY) eval/run.py --bench tv_align --model runs/sft-default/final --data data/shapes/test/tv_align.jsonl \
		--output runs/sft-default/eval-test.json
	$(PY) -m mmvid.plots curve runs/sft-default --output runs/sft-default/learning_curve.png
	$(PY) -m mmvid.chat --model runs/sft-default/final --video data/shapes/test/videos/000000.mp4 \
		--prompt "Describe the video."
	$(PY) eval/run.py --bench tv_align_gen --model runs/sft-default/final --limit 50 \
		--option save=runs/sft-default/generated --output runs/sft-default/eval-gen.json
	$(PY) -m mmvid.chat --model runs/sft-default/final --output runs/sft-default/generated.gif \
		--generate "There are two objects: a large red circle that moves left slowly and a small blue square that blinks quickly."

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

test-slow: setup
	$(PY) -m pytest -m slow

# The walk over every causal-LM architecture transformers registers (tests/test_llm_registry.py, about a minute
# on 2 cores); its table goes to runs/llm_registry.json. CI runs it after `make test`.
test-registry: setup
	$(PY) -m pytest -m slow tests/test_llm_registry.py

clean-venv:
	rm -rf $(VENV)
