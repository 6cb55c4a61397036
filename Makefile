# maskcomp: `make all` runs the whole pipeline, `make test` the tests. Both set up .venv first.
PYTHON_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA ?= input/data
# The generated sample gets the CPU-fast config; real data gets the default one. Override with CONFIG=...
# DATA and CONFIG may hold spaces: they are tested and passed quoted (make's own wildcard would split them)
SAMPLE_MARK = $(DATA)/.generated_sample
ifeq ($(shell test -f "$(DATA)/train/train.csv" && test ! -f "$(SAMPLE_MARK)" && echo real),real)
  CONFIG ?= configs/default.yaml
endif
CONFIG ?= configs/sample.yaml
ARGS ?=
RUN = $(PY) $(1) --config "$(CONFIG)" "paths.data_root=$(DATA)" $(ARGS)
REQ_HASH := $(shell cat requirements.txt requirements-nodeps.txt | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(REQ_HASH)
# setuptools reports every editable install with a multi-line "Editable installation" notice that says nothing
# about this project (its advice concerns folders shadowing the package, which the setup check below covers)
EDITABLE_INSTALL = PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install -q --no-deps -e .

.PHONY: all setup test test-fast lint sample eda crop folds train infer ensemble analyze relabel review tune tune-dashboard refit bench bench-tune bench-refit bench-noise bench-quality bench-scale bench-upstream bench-levers gpu-check clean clean-everything

all: setup sample eda crop folds train infer ensemble analyze

# The stamp's name carries the requirements' digest, so it depends on their content, never on their mtime (a
# copied tree must not re-run setup). After it, setup checks that maskcomp imports from this tree and
# reinstalls it (editable) when it does not, e.g. after the folder it pointed to was moved or deleted
# (-I: the current folder on sys.path would hide a broken install).
ifeq ($(SKIP_SETUP),1)
setup:
	@echo "setup: skipped (SKIP_SETUP=1)"
else
setup: $(STAMP)
	@$(PY) -I -c "import maskcomp, pathlib, sys; sys.exit(pathlib.Path(maskcomp.__file__).resolve().parents[1] != pathlib.Path('$(CURDIR)').resolve())" 2>/dev/null \
	  || { echo "setup: maskcomp does not import from $(CURDIR); reinstalling it"; $(EDITABLE_INSTALL); }
endif

$(STAMP):
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	$(EDITABLE_INSTALL)
	rm -f $(VENV)/.installed-*
	touch $@

# pytest-xdist: TEST_WORKERS processes, each test file on one of them (a module's shared trained run is made once)
TEST_WORKERS ?= 2
PYTEST = $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: setup
	$(PYTEST) tests

# the quick part of the suite (no test marked slow): under a minute on 2 cores
test-fast: setup
	$(PYTEST) -m "not slow" tests

# ruff: lint (pyflakes, pycodestyle, import order) and format, line length 120 (pyproject.toml)
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Generate the sample dataset only when there is no data at all.
sample: setup
	@if [ -f "$(DATA)/train/train.csv" ]; then echo "sample: $(DATA) already has data, nothing to do"; \
	else $(call RUN,preprocess/make_sample.py) && touch "$(SAMPLE_MARK)"; fi

eda: setup
	$(call RUN,preprocess/eda.py)

crop: setup
	$(call RUN,preprocess/crop_faces.py)

folds: setup
	$(call RUN,folds/make_folds.py)

train: setup
	$(call RUN,train.py)

infer: setup
	$(call RUN,infer.py)

ensemble: setup
	$(call RUN,ensemble.py)

analyze: setup
	$(call RUN,analyze.py)

# confident label fixes of the trained run (runs/<exp>/<run>/label_fixes_auto.csv); train.csv is never changed
relabel: setup
	$(call RUN,relabel.py)

# final models on every training person, for the epochs the folds chose (refit.seeds of them); then make infer and
# make ensemble ARGS=ensemble.models=refit (or both)
refit: setup
	$(call RUN,refit.py)

# the label review page over make relabel's candidates, on 127.0.0.1 (PORT=8765; a free port when not given)
PORT ?= 0
review: setup
	$(call RUN,review.py) --port $(PORT)

# an Optuna search: TUNE=configs/tune/<name>.yaml (its `tune:` section); ARGS apply to every trial. Workers on
# other machines join the same study with TUNE_STORAGE=postgresql://user:password@host/db
TUNE ?= configs/tune/sample.yaml
tune: setup
	$(PY) tune.py --config "$(TUNE)" "paths.data_root=$(DATA)" $(ARGS)

# optuna-dashboard on the same study's storage, on 127.0.0.1 (PORT=8080; a free port when not given): live trials,
# intermediate values fold by fold, importances, while workers run
tune-dashboard: setup
	$(PY) tune_dashboard.py --config "$(TUNE)" "paths.data_root=$(DATA)" --port $(PORT) $(ARGS)

bench: setup
	$(PY) bench/run.py $(ARGS)

# every CUDA path on a tiny generated dataset (about two minutes on a GPU); says so and exits 0 without CUDA
gpu-check: setup
	$(PY) gpu_check.py $(ARGS)

bench-quality: setup
	$(PY) bench/quality.py $(ARGS)

# pruned against unpruned search of the same trials on real faces, and the best config against the hand-set recipe
bench-tune: setup
	$(PY) bench/tune.py $(ARGS)

# how long infer and ensemble take to decide their upstream is current (nothing changed), on 12,600 eval images;
# ARGS="--code DIR" times an earlier checkout beside this one
bench-upstream: setup
	$(PY) bench/upstream.py $(ARGS)

# folds vs refit vs both on eval, on a kept quality work folder: make bench-refit ARGS="--work DIR"
bench-refit: setup
	$(PY) bench/refit.py $(ARGS)

# the winners' levers on the quality recipe, one row each, then the combination CV chose (configs/quality_best.yaml)
bench-levers: setup
	$(PY) bench/levers.py $(ARGS)

# planted label errors in a linked copy of the shared data: detection per kind, then noisy / auto-fixed / oracle runs
bench-noise: setup
	$(PY) bench/noise.py $(ARGS)

# crop and infer on a competition-sized eval set (12,600 generated images): wall time, images/s, peak RSS (about 90 min)
bench-scale: setup
	$(PY) bench/scale.py $(ARGS)

# what the pipeline regenerates (crops, folds, trained runs, reports, cache); review decisions, tune studies and
# submissions stay, and the closing line counts them
clean: setup
	$(call RUN,-m maskcomp.clean)

# everything clean removes, and the review decisions, tune studies and submissions too (counted)
clean-everything: setup
	$(call RUN,-m maskcomp.clean) --everything
