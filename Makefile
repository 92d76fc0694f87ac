# make demo   — set up and run the local demo stack (OAuth server, httpbin, gateway on :8080)
# make test   — set up and run the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: venv demo demo-stop test validate routes bench clean redis-server

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

# The shared-cache tests need a real redis-server (Debian package); install it when missing.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server (Debian package)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; }

test: venv redis-server
	$(PY) -m pytest -q

validate: venv
	$(PY) -m gateway_app validate

routes: venv
	$(PY) -m gateway_app routes

bench: venv
	bash bench/run.sh

clean:
	rm -rf $(VENV) .demo .pytest_cache
