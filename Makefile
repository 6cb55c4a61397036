# maskcomp: `make all` runs the whole pipeline, `make test` the tests. Both set up .venv first.
PYTHON_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA ?= input/data
# The generated sample gets the CPU-fast config; real data gets the default one. Override with CONFIG=...
SAMPLE_MARK := $(DATA)/.generated_sample
ifneq ($(wildcard $(DATA)/train/train.csv),)
  ifeq ($(wildcard $(SAMPLE_MARK)),)
    CONFIG ?= configs/default.yaml
  endif
endif
CONFIG ?= configs/sample.yaml
ARGS ?=
RUN = $(PY) $(1) --config $(CONFIG) paths.data_root=$(DATA) $(ARGS)
REQ_HASH := $(shell cat requirements.txt requirements-nodeps.txt | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(REQ_HASH)

.PHONY: all setup test sample eda crop folds train infer ensemble analyze bench bench-quality clean

all: setup sample eda crop folds train infer ensemble analyze

setup: $(STAMP)
$(STAMP): requirements.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install -q --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $@

test: setup
	$(PY) -m pytest -q tests

# Generate the sample dataset only when there is no data at all.
sample: setup
	@if [ -f $(DATA)/train/train.csv ]; then echo "sample: $(DATA) already has data, nothing to do"; \
	else $(call RUN,preprocess/make_sample.py) && touch $(SAMPLE_MARK); fi

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

bench: setup
	$(PY) bench/run.py $(ARGS)

bench-quality: setup
	$(PY) bench/quality.py $(ARGS)

clean:
	rm -rf preprocess/crops folds/folds.csv folds/fold_summary.* runs reports cache submissions/*.csv submissions/*.json
