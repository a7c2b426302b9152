# Two commands do everything on a fresh machine:
#   make demo   - set up and start the demo tree of cells
#   make test   - set up and run every check: ruff, mypy, unit and integration tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench soak clean

$(STAMP): setup.py pyproject.toml scripts/setup-system
	bash scripts/setup-system
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# compat mode puts the checkout itself on sys.path, so Twisted's plugin
	# loader finds twisted/plugins/cellsd_plugin.py in this tree
	$(BIN)/python -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	$(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cellsd demo --dir demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

test: lint typecheck
	$(BIN)/python -m pytest tests

bench: $(STAMP)
	$(BIN)/python -m bench

# durable delivery under random faults (bench/soak.py; a correctness run, ~80 s)
soak: $(STAMP)
	$(BIN)/python -m bench.soak

clean:
	rm -rf $(VENV) demo build *.egg-info
