# make demo   — set up and run the local demo stack (OAuth server, httpbin, gateway on :8080)
# make test   — set up and run the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: venv demo demo-stop test validate routes bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	bash deploy/demo.sh

demo-stop:
	bash deploy/demo-stop.sh

test: venv
	$(PY) -m pytest -q

validate: venv
	$(PY) -m gateway_app validate

routes: venv
	$(PY) -m gateway_app routes

bench: venv
	bash bench/run.sh

clean:
	rm -rf $(VENV) .demo .pytest_cache
