# `make figures` and `make test` set everything up themselves (a .venv next to this file).
# PROFILE=smoke (default, a 2-core CPU in minutes), PROFILE=fast (the paper's models on short schedules,
# minutes on one GPU) or PROFILE=paper (Appendix A's scale, GPU-hours).
# EXECUTOR=auto (default: with 2 or more task slots Ray, or local worker processes without Ray; else
# serial), serial, ray or local;
# RAY_ADDRESS= joins a running cluster ("auto" or ray://host:port) instead of starting Ray.
PROFILE ?= smoke
EXECUTOR ?= auto
RAY_ADDRESS ?=
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.ipynb))
SANITIZE := notebooks/sanitize.cfg

.PHONY: setup figures results test unit nbval refresh-notebooks clean-runs

setup: $(VENV)/.installed

# torch and torchvision first, pinned and on their own: pip then takes them from a local
# wheel cache where one exists instead of resolving a different build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[notebooks,dev]'
	touch $@

RUN_OPTIONS = --executor $(EXECUTOR) $(if $(RAY_ADDRESS),--ray-address $(RAY_ADDRESS))

# Every notebook's tasks on one executor first (`python -m stitchlib run all`: independent models of
# all five run side by side), then the notebooks, which only load. Each step's wall time goes to
# figures/$(PROFILE)/timings.csv with the machine and the executor, for the README.
figures: setup
	@mkdir -p runs/$(PROFILE) figures/$(PROFILE)
	@cpu=$$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1 | tr -d ','); \
	executor=$$($(BIN)/python -c "from stitchlib.experiments.executors import make_executor as m; \
	  print(m('$(EXECUTOR)', ray_address='$(RAY_ADDRESS)').name)") || exit 1; \
	echo "step,seconds,date,cpu,cores,executor" > figures/$(PROFILE)/.timings.csv; \
	start=$$(date +%s); \
	$(BIN)/python -m stitchlib run all --profile $(PROFILE) --no-plots $(RUN_OPTIONS) || exit 1; \
	echo "compute (stitchlib run all),$$(( $$(date +%s) - start )),$$(date +%F),$$cpu,$$(nproc),$$executor" \
	  >> figures/$(PROFILE)/.timings.csv; \
	for nb in $(NOTEBOOKS); do \
	  name=$$(basename $$nb .ipynb); \
	  echo "== $$name ($(PROFILE))"; \
	  start=$$(date +%s); \
	  $(BIN)/papermill $$nb runs/$(PROFILE)/$$name.ipynb -f notebooks/params/$$name.$(PROFILE).yaml \
	    -p executor $(EXECUTOR) $(if $(RAY_ADDRESS),-p ray_address $(RAY_ADDRESS)) \
	    --cwd notebooks --progress-bar || exit 1; \
	  echo "$$name,$$(( $$(date +%s) - start )),$$(date +%F),$$cpu,$$(nproc),$$executor" \
	    >> figures/$(PROFILE)/.timings.csv; \
	done; \
	mv figures/$(PROFILE)/.timings.csv figures/$(PROFILE)/timings.csv
	@echo "figures in figures/$(PROFILE)/, executed notebooks in runs/$(PROFILE)/"

# Keep a run's result tables under results/$(PROFILE)/ and render the README's results from them.
results: setup
	$(BIN)/python -m stitchlib collect --profile $(PROFILE)
	$(BIN)/python -m stitchlib readme --profile $(PROFILE)

# The unit tests on every core (pytest-xdist, one process per core, a test file per process).
XDIST = -n $(shell nproc) --dist loadfile

unit: setup
	$(BIN)/python -m pytest tests -q $(XDIST)

NBVAL := --nbval-lax --nbval-current-env --nbval-sanitize-with $(SANITIZE) --nbval-cell-timeout 1200

# The smoke plans on the default executor first (the notebooks' tasks side by side), then the unit
# tests and nbval (pytest-xdist), nbval finding every notebook's results stored.
test: setup
	$(BIN)/python -m stitchlib run all --profile smoke --no-plots $(RUN_OPTIONS)
	$(BIN)/python -m pytest tests $(NOTEBOOKS) $(NBVAL) -q -p no:cacheprovider $(XDIST)

# The notebooks' part of `make test` alone: nbval over the committed notebooks.
nbval: setup
	$(BIN)/python -m pytest $(NOTEBOOKS) $(NBVAL) -q -p no:cacheprovider

# Re-run the committed notebooks at the smoke profile, in place and without parameters,
# to refresh the outputs nbval compares against.
refresh-notebooks: setup
	@for nb in $(NOTEBOOKS); do \
	  $(BIN)/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=1800 \
	    --ExecutePreprocessor.store_widget_state=False $$nb || exit 1; \
	done

clean-runs:
	rm -rf runs
