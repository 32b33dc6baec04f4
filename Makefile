# Two entry points: `make demo` and `make test`. Each creates .venv and installs diffkit
# with the exact versions these machines are known to work with (constraints.txt).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.diffkit-installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade "pip>=23" "setuptools>=64"
	$(PY) -m pip install -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/diffkit demo --output demo-output

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -p no:cacheprovider --durations=15 tests

clean:
	rm -rf $(VENV) demo-output build *.egg-info
