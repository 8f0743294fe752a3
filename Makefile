# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-slow demo clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU build of torch first, so that nothing pulls a multi-GB CUDA build
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[torch,test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -x -p no:cacheprovider --timeout=1200

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow -p no:cacheprovider

demo: $(STAMP)
	$(BIN)/python -m demo

clean:
	rm -rf $(VENV) runs demo_data
