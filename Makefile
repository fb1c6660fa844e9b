# `make figures` and `make test` set everything up themselves (a .venv next to this file).
# PROFILE=smoke (default, a 2-core CPU in minutes) or PROFILE=paper (Appendix A's scale, one GPU).
PROFILE ?= smoke
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

# Each notebook's wall time goes to figures/$(PROFILE)/timings.csv with the machine, for the README.
figures: setup
	@mkdir -p runs/$(PROFILE) figures/$(PROFILE)
	@cpu=$$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1 | tr -d ','); \
	echo "notebook,seconds,date,cpu,cores" > figures/$(PROFILE)/.timings.csv; \
	for nb in $(NOTEBOOKS); do \
	  name=$$(basename $$nb .ipynb); \
	  echo "== $$name ($(PROFILE))"; \
	  start=$$(date +%s); \
	  $(BIN)/papermill $$nb runs/$(PROFILE)/$$name.ipynb -f notebooks/params/$$name.$(PROFILE).yaml \
	    --cwd notebooks --progress-bar || exit 1; \
	  echo "$$name,$$(( $$(date +%s) - start )),$$(date +%F),$$cpu,$$(nproc)" \
	    >> figures/$(PROFILE)/.timings.csv; \
	done; \
	mv figures/$(PROFILE)/.timings.csv figures/$(PROFILE)/timings.csv
	@echo "figures in figures/$(PROFILE)/, executed notebooks in runs/$(PROFILE)/"

# Keep a run's result tables under results/$(PROFILE)/ and render the README's results from them.
results: setup
	$(BIN)/python -m stitchlib collect --profile $(PROFILE)
	$(BIN)/python -m stitchlib readme --profile $(PROFILE)

unit: setup
	$(BIN)/python -m pytest tests -q

NBVAL := --nbval-lax --nbval-current-env --nbval-sanitize-with $(SANITIZE) --nbval-cell-timeout 1200

test: setup
	$(BIN)/python -m pytest tests $(NOTEBOOKS) $(NBVAL) -q -p no:cacheprovider

# The notebooks' part of `make test` alone: nbval over the committed notebooks.
nbval: setup
	$(BIN)/python -m pytest $(NOTEBOOKS) $(NBVAL) -q -p no:cacheprovider

# Re-run the committed notebooks at the smoke profile, in place and without parameters,
# to refresh the outputs nbval compares against.
refresh-notebooks: setup
	@for nb in $(NOTEBOOKS); do \
	  $(BIN)/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=1800 $$nb || exit 1; \
	done

clean-runs:
	rm -rf runs
