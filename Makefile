# The two quick-start commands: `make run` and `make test`. Each bootstraps what it needs:
# `make run` only the broker's own dependencies, `make test` the test extras on top.
VENV ?= .venv
PY := $(VENV)/bin/python
RUNTIME := $(VENV)/.runtime
STAMP := $(VENV)/.installed
PYTHON ?= python3

.PHONY: run test unit lint tools

$(RUNTIME): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(RUNTIME)
	$(VENV)/bin/polybroker serve

test: lint tools
	$(PY) -m pytest

# The unit and in-memory tests only: no Debian packages, no npm.
unit: $(STAMP)
	$(PY) -m pytest tests

# mypy checks all three folders; the modules it leaves out for now are listed, with the
# reason, under [tool.mypy] in pyproject.toml.
TYPED := polybroker protocols storage

# protocols/ and storage/ install as polybroker.protocols and polybroker.storage through an
# import hook of the editable install, which mypy cannot follow. It finds them in this
# tree of links instead (mypy_path in pyproject.toml).
MYPY_TREE := build/mypy/polybroker

$(MYPY_TREE):
	mkdir -p $(MYPY_TREE)
	ln -sfn ../../../protocols $(MYPY_TREE)/protocols
	ln -sfn ../../../storage $(MYPY_TREE)/storage

lint: $(STAMP) $(MYPY_TREE)
	$(PY) -m ruff check .
	$(PY) -m mypy $(TYPED)

tools:
	@sh interop/install-tools.sh
