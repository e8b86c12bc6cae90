# Two commands do everything on a fresh machine: `make run` (the study on the embedded
# synthetic dataset) and `make test`. Both create .venv/ on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run test lab clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,cluster]'
	# A kernel named after the project, inside the venv, so papermill/nbval/JupyterLab
	# run notebooks with this environment (avoids NoSuchKernel / wrong interpreter).
	$(BIN)/python -m ipykernel install --sys-prefix --name mistudy --display-name "Python (mistudy)"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m mistudy demo
	$(BIN)/python -m mistudy study $(ARGS)

# Passive OpenMP waiting: the notebooks' kernels, torchrun workers and pytest share 2 cores in CI, and
# spinning idle threads slow the many small ops of the tiny test runs by up to 10x.
test: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest $(ARGS)

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks

clean-venv:
	rm -rf $(VENV)
