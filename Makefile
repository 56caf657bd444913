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
PRECISION ?= auto
BENCH_ARGS ?=
NPROC    ?= 1
LABELS   ?= data/training_label.json
SPLIT    ?=
VAL_LABELS ?=
VAL_SPLIT ?=
RUN      ?= runs/s2vt
EPOCHS   ?= 100
TRAIN_ARGS ?=
TEST_LABELS ?= data/testing_label.json
TEST_SPLIT ?=
BEAM     ?= 5
EVAL_ARGS ?=
DEMO_SEED ?= 0
SEED_SUFFIX = $(if $(filter 0,$(DEMO_SEED)),,-seed$(DEMO_SEED))
SAMPLE   ?= data/sample$(SEED_SUFFIX)
DEMO_RUN ?= runs/demo$(SEED_SUFFIX)
DEMO_CLIPS ?= 12
DEMO_FRAMES ?= 16
DEMO_EPOCHS ?= 20
DEMO_TRAIN_ARGS ?= --hidden 256 --embed 128 --dropout 0.6 --lr-schedule cosine --captions-per-epoch all \
	--schedule constant --val-fraction 0 --motion 6 --attention luong
VIDEO    ?=

VENV := .venv
PY   := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# One process: plain python. NPROC=N: N processes on this machine through torchrun (one GPU each).
LAUNCH = $(if $(filter 1,$(NPROC)),$(PY),$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC))

.DEFAULT_GOAL := help
.PHONY: help setup test test-fast features train eval captions caption sample demo bench clean-venv

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo "Variables: RAW=$(RAW) BACKBONE=$(BACKBONE) FRAMES=$(FRAMES) FEATURES=$(FEATURES)"
	@echo "           (train, eval, captions: FEATURES=\"a.h5 b.h5\" reads several stores of the same clips side by side)"
	@echo "           WEIGHTS=$(WEIGHTS) DEVICE=$(DEVICE) BATCH=$(BATCH) DECODER=$(DECODER) PRECISION=$(PRECISION)"
	@echo "           LABELS=$(LABELS) SPLIT=$(SPLIT) VAL_LABELS=$(VAL_LABELS) VAL_SPLIT=$(VAL_SPLIT)"
	@echo "           RUN=$(RUN) EPOCHS=$(EPOCHS) TRAIN_ARGS=$(TRAIN_ARGS) NPROC=$(NPROC)"
	@echo "           TEST_LABELS=$(TEST_LABELS) TEST_SPLIT=$(TEST_SPLIT) BEAM=$(BEAM) EVAL_ARGS=$(EVAL_ARGS) VIDEO=$(VIDEO)"
	@echo "           DEMO_SEED=$(DEMO_SEED) SAMPLE=$(SAMPLE) DEMO_RUN=$(DEMO_RUN) DEMO_CLIPS=$(DEMO_CLIPS) DEMO_FRAMES=$(DEMO_FRAMES) DEMO_EPOCHS=$(DEMO_EPOCHS)"

setup: $(STAMP) ## create .venv and install the project with its test extras (no-op when up to date)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

test: setup ## run the whole test suite (its time on 2 cores: docs/testing.md)
	$(PY) -m pytest -q

test-fast: setup ## run every module's unit tests, leaving out the slow ones (make targets, torchrun, kills, demo)
	$(PY) -m pytest -q -m "not slow"

features: setup ## extract CNN features of every new or changed clip in RAW into FEATURES
	$(if $(word 2,$(FEATURES)),$(error FEATURES="$(FEATURES)" names several stores, and make features writes one \
		at a time: run it once per store, with that store's network, e.g. make features BACKBONE=<its network> \
		FEATURES=$(word 2,$(FEATURES))))
	$(LAUNCH) extract_features.py --raw $(RAW) --features $(FEATURES) --backbone $(BACKBONE) \
		--frames $(FRAMES) --weights $(WEIGHTS) --device $(DEVICE) --decoder $(DECODER) \
		--precision $(PRECISION) $(if $(BATCH),--batch $(BATCH))

train: setup ## train S2VT on FEATURES + LABELS into RUN (resumes RUN/last.pt; TRAIN_ARGS for more options)
	$(LAUNCH) train.py --features $(FEATURES) --labels $(LABELS) --run-dir $(RUN) --epochs $(EPOCHS) \
		--device $(DEVICE) $(if $(BATCH),--batch-size $(BATCH)) $(if $(SPLIT),--split $(SPLIT)) \
		$(if $(VAL_LABELS),--val-labels $(VAL_LABELS)) $(if $(VAL_SPLIT),--val-split $(VAL_SPLIT)) $(TRAIN_ARGS)

eval: setup ## caption the test videos with RUN/best.pt, score them against TEST_LABELS, write RUN/scores.json and RUN/report.html
	$(PY) evaluate.py --run-dir $(RUN) --features $(FEATURES) --references $(TEST_LABELS) --beam $(BEAM) \
		--raw $(RAW) --device $(DEVICE) $(if $(TEST_SPLIT),--references-split $(TEST_SPLIT)) $(EVAL_ARGS)

captions: setup ## caption every video in FEATURES with RUN/best.pt into RUN/captions_all.txt
	$(PY) evaluate.py --all --run-dir $(RUN) --features $(FEATURES) --beam $(BEAM) --device $(DEVICE) $(EVAL_ARGS)

caption: setup ## caption the video file(s) VIDEO="a.avi b.mp4" with RUN/best.pt
	$(if $(VIDEO),,$(error make caption needs the files to caption: make caption VIDEO="a.avi b.mp4"))
	$(PY) caption.py $(VIDEO) --run-dir $(RUN) --beam $(BEAM) --device $(DEVICE)

sample: setup ## generate the embedded sample dataset (synthetic captioned clips) into SAMPLE
	$(PY) sample.py --sample $(SAMPLE) --clips-per-combination $(DEMO_CLIPS) --seed $(DEMO_SEED)

# fp32 features: the demo's motion stream amplifies feature differences, which bf16's rounding distorts
# (docs/performance.md, "Why the demo extracts at fp32").
DEMO_FEATURES = $(SAMPLE)/features/efficientnet_lite0_$(DEMO_FRAMES).h5
demo: sample ## the whole chain on the sample set: features, train, eval -> DEMO_RUN/report.html
	$(MAKE) --no-print-directory features RAW=$(SAMPLE)/raw FEATURES=$(DEMO_FEATURES) \
		BACKBONE=efficientnet_lite0 FRAMES=$(DEMO_FRAMES) WEIGHTS=imagenet BATCH= PRECISION=fp32
	$(MAKE) --no-print-directory train FEATURES=$(DEMO_FEATURES) LABELS=$(SAMPLE)/training_label.json \
		RUN=$(DEMO_RUN) EPOCHS=$(DEMO_EPOCHS) BATCH=32 TRAIN_ARGS="$(DEMO_TRAIN_ARGS) --seed $(DEMO_SEED)"
	$(MAKE) --no-print-directory eval FEATURES=$(DEMO_FEATURES) TEST_LABELS=$(SAMPLE)/testing_label.json \
		RUN=$(DEMO_RUN) RAW=$(SAMPLE)/raw
	$(PY) -m pipeline.attributes $(DEMO_RUN)/captions.txt $(SAMPLE)/attributes.json --scores $(DEMO_RUN)/scores.json
	@echo "demo finished: scores in $(DEMO_RUN)/scores.json, report in $(DEMO_RUN)/report.html"

bench: setup ## run every benchmark side by side (about 7 min on 2 CPU cores), print a table, write bench/results.json
	$(PY) bench/run_all.py --device $(DEVICE) $(BENCH_ARGS)

clean-venv: ## remove the virtual environment
	rm -rf $(VENV)
