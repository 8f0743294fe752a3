# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
BASE := $(VENV)/.installed-base  # the package and its dependencies: all `make demo` needs
STAMP := $(VENV)/.installed  # and PyTorch (the test oracle) and the test tools

.PHONY: install test test-slow check-transformers4 demo clean

$(BASE): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $(BASE)

$(STAMP): $(BASE)
	# the CPU build of torch first, so that nothing pulls a multi-GB CUDA build
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[torch,test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -x -p no:cacheprovider --timeout=1200

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow -p no:cacheprovider

# exports load in transformers 4 too: a second venv with transformers 4 (no torch) runs the exported folder
TF4 := .venv-transformers4
check-transformers4: $(STAMP)
	test -x $(TF4)/bin/python || $(PY) -m venv $(TF4)
	$(TF4)/bin/pip install -q "transformers>=4.57,<5" pillow numpy
	VLM_JAX_TRANSFORMERS4_PYTHON=$(TF4)/bin/python $(BIN)/python -m pytest -q -m slow -p no:cacheprovider \
		tests/infer/test_infer_hf5.py -k transformers4

demo: $(BASE)
	$(BIN)/python -m demo

clean:
	rm -rf $(VENV) $(TF4) runs demo_data
