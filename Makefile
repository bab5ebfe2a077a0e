# The README's two commands are `make demo` and `make test`; each sets up first.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup test-deps demo test test-fast bench clean

setup: $(STAMP)

# Re-installs only when the project's dependencies change; pip (not uv) so torch comes
# from the machine's local wheel cache.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: setup
	$(BIN)/hashray demo
	@echo
	@echo "See the search in a browser (reuses the outputs above, serves until Ctrl-C):"
	@echo "  $(BIN)/hashray demo --serve    then open http://127.0.0.1:8000/"

# Best effort (apt-get as root): Fashion-MNIST and headless Chromium; their tests skip without.
test-deps:
	@bash scripts/install-test-deps.sh

test: setup test-deps
	$(BIN)/python -m pytest tests

# No Ray and nothing slow: the library, the CLI's parsing and errors, docs and lint.
test-fast: setup
	$(BIN)/python -m pytest tests -m "not ray and not slow"

bench: setup
	$(BIN)/python benchmarks/pipeline_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
