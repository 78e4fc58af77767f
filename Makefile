# Two commands do all set-up on a fresh machine:
#   make test   create .venv if needed, install, run the whole suite
#   make demo   create .venv if needed, install, run the SOPHIA loop on the tiny default
#   make ablations   the paper's selection ablations on the demo's task (.ablations/ablations.txt)
# CPU hosts get the local CPU build of torch first, so nothing can pull a CUDA torch.

PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml requirements/cpu-constraints.txt | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: install test test-fast demo ablations lint clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements/cpu-constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c requirements/cpu-constraints.txt -e ".[train,rollout-cpu,dev]"
	@# vLLM pulls torchvision/torchaudio wheels built against CUDA torch. torchvision stays (vLLM's
	@# InternVL image processor needs it): a start-up hook (.pth) lets it import on a CPU-only torch,
	@# in every interpreter incl. vLLM's workers. torchaudio/torchcodec break imports and are unused.
	$(PY) -m sophia_common.torchvision_shim --install
	$(PY) -m pip uninstall --quiet -y torchaudio torchcodec || true
	$(PY) -c "import torchvision, transformers"
	rm -f $(VENV)/.installed-*
	touch $@

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m sophia_tools.demo $(DEMO_ARGS)

ablations: $(STAMP)
	$(PY) -m sophia_tools.ablations $(ABLATIONS_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	shellcheck -x launchers/*.sh .ci/slurm/*.sh

clean:
	rm -rf $(VENV) .demo .ablations .pytest_cache
