# The user's interface: every target installs what it needs first (`setup`).
# Variables (override on the command line, e.g. `make features BACKBONE=resnet50`):
PYTHON   ?= python3
RAW      ?= data/raw
BACKBONE ?= vgg16
FRAMES   ?= 80
FEATURES ?= data/features/$(BACKBONE)_$(FRAMES).h5
WEIGHTS  ?= imagenet
DEVICE   ?= auto
BATCH    ?=
DECODER  ?= auto
LABELS   ?= data/training_label.json
RUN      ?= runs/s2vt
EPOCHS   ?= 100
TRAIN_ARGS ?=
TEST_LABELS ?= data/testing_label.json
BEAM     ?= 5
EVAL_ARGS ?=

VENV := .venv
PY   := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help setup test features train eval captions clean-venv

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo "Variables: RAW=$(RAW) BACKBONE=$(BACKBONE) FRAMES=$(FRAMES) FEATURES=$(FEATURES)"
	@echo "           WEIGHTS=$(WEIGHTS) DEVICE=$(DEVICE) BATCH=$(BATCH) DECODER=$(DECODER)"
	@echo "           LABELS=$(LABELS) RUN=$(RUN) EPOCHS=$(EPOCHS) TRAIN_ARGS=$(TRAIN_ARGS)"
	@echo "           TEST_LABELS=$(TEST_LABELS) BEAM=$(BEAM) EVAL_ARGS=$(EVAL_ARGS)"

setup: $(STAMP) ## create .venv and install the project with its test extras (no-op when up to date)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

test: setup ## run the test suite
	$(PY) -m pytest -q

features: setup ## extract CNN features of every new or changed clip in RAW into FEATURES
	$(PY) extract_features.py --raw $(RAW) --features $(FEATURES) --backbone $(BACKBONE) \
		--frames $(FRAMES) --weights $(WEIGHTS) --device $(DEVICE) --decoder $(DECODER) \
		$(if $(BATCH),--batch $(BATCH))

train: setup ## train S2VT on FEATURES + LABELS into RUN (resumes RUN/last.pt; TRAIN_ARGS for more options)
	$(PY) train.py --features $(FEATURES) --labels $(LABELS) --run $(RUN) --epochs $(EPOCHS) \
		--device $(DEVICE) $(if $(BATCH),--batch-size $(BATCH)) $(TRAIN_ARGS)

eval: setup ## caption the test videos with RUN/best.pt, score them against TEST_LABELS, write RUN/scores.json and RUN/report.html
	$(PY) evaluate.py --run $(RUN) --features $(FEATURES) --references $(TEST_LABELS) --beam $(BEAM) \
		--raw $(RAW) --device $(DEVICE) $(EVAL_ARGS)

captions: setup ## caption every video in FEATURES with RUN/best.pt into RUN/captions_all.txt
	$(PY) evaluate.py --all --run $(RUN) --features $(FEATURES) --beam $(BEAM) --device $(DEVICE) $(EVAL_ARGS)

clean-venv: ## remove the virtual environment
	rm -rf $(VENV)
