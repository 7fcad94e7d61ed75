# The README's two commands: `make demo` (the main job) and `make test` (the whole suite).
# Both create or reuse the virtual environment .venv with palnet installed in editable mode.
# Each install step prints one line saying what it does; pip runs quietly (-q) and speaks only
# when something goes wrong. setuptools' note on every editable install ("Editable installation.
# ... Please be careful with folders in your working directory ...", a warning that is only
# information) is filtered out.
QUIET_EDITABLE := PYTHONWARNINGS="ignore:Editable installation"
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch is pinned so pip takes the CPU wheel instead of a multi-GB CUDA build.
TORCH  := torch==2.13.0

.PHONY: demo test clean-venv

$(BIN)/python:
	@echo "[setup] creating the virtual environment $(VENV)"
	@$(PYTHON) -m venv $(VENV)
	@echo "[setup] upgrading pip"
	@$(BIN)/python -m pip install -q --upgrade pip

# Inference needs only numpy, scipy and vtk.
$(VENV)/.demo-deps: pyproject.toml | $(BIN)/python
	@echo "[setup] installing palnet (editable) with numpy, scipy and vtk"
	@$(QUIET_EDITABLE) $(BIN)/python -m pip install -q -e .
	@touch $@

# Training and test extras in the same environment; slicer-core pins vtk, so it is
# resolved together with the project. The constraints file fixes the versions the suite runs
# against, the same on every machine.
CONSTRAINTS := Testing/constraints.txt
$(VENV)/.test-deps: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	@echo "[setup] installing palnet (editable) with the training and test extras and $(TORCH); this takes a few minutes"
	@$(QUIET_EDITABLE) $(BIN)/python -m pip install -q -e ".[train,test]" "$(TORCH)" -c $(CONSTRAINTS)
	@touch $@ $(VENV)/.demo-deps

SAMPLE := PALNetLandmarks/Resources/Samples

# The main job: the shipped model on the shipped sample scan, then the error against its known landmarks.
demo: $(VENV)/.demo-deps
	$(BIN)/palnet predict $(SAMPLE)/sample_face.ply -o out/demo --png out/demo/sample_face.png --overwrite --show
	$(BIN)/palnet evaluate --pred out/demo --truth $(SAMPLE)

test: $(VENV)/.test-deps
	$(BIN)/python -m pytest -q Testing

clean-venv:
	rm -rf $(VENV)
