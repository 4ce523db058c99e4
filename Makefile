# The two commands a fresh machine needs: `make run` and `make test`.
# Both install what is missing first (a virtualenv in .venv, npm packages).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test install lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Start Redis (embedded unless REDIS_URL is set), web, worker and beat; Ctrl-C stops them all.
run: install
	$(PY) -m app.launcher

## Run every test: unit, integration (real Redis, gunicorn, Celery) and browser.
test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check app workers tests bench
	$(VENV)/bin/ruff format --check app workers tests bench
	$(VENV)/bin/mypy app workers

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache *.egg-info
