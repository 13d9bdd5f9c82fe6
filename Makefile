# The README's two commands: `make run` (install + main job on built-in data) and `make test` (install + all tests).
# Both create ./.venv on first use; PYTHON picks the interpreter that builds it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.synthseg-installed

.PHONY: run test install export clean-nbs

$(STAMP): setup.py settings.ini pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(STAMP)

# The main job: the domain-shift experiment on the built-in scenes, into runs/domain_shift/<timestamp>_defaults/.
run: $(STAMP)
	$(BIN)/synthseg run domain_shift

# nbdev-test runs every library notebook (one worker: two torch processes fight over 2 cores);
# pytest covers tests/, including the notebooks-in-sync and no-outputs checks.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/nbdev-test --n-workers 1
	$(BIN)/python -m pytest -q tests

# Developer helpers: regenerate synthseg/ from nbs/, and strip outputs/metadata from notebooks.
export: $(STAMP)
	$(BIN)/nbdev-export

clean-nbs: $(STAMP)
	$(BIN)/nbdev-clean
