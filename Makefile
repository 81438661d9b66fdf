# ML Manager — the two commands a user needs: `make run` and `make test`.
# Both create .venv when it is missing and reinstall only when a requirements file changed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP_RUN  := $(VENV)/.installed-run
STAMP_DEV  := $(VENV)/.installed-dev
HOST   ?= 127.0.0.1
PORT   ?= 8501
WORKERS ?= 2
# Test processes: many tests wait on a worker, a server or chromium, so 3 keep 2 cores busy (14 mid-weight
# files, 431 tests, on 2 cores: 178 s with 2, 154 s with 3, 161 s with 4).
TEST_JOBS ?= 3
# With ML_MANAGER_QUEUE=redis://... (several machines, see the README) the worker on this machine is
# `python -m engine worker` and takes these queues; otherwise huey's consumer on the SQLite queue file.
QUEUES ?= training,inference
ifneq ($(filter redis% rediss% unix%,$(ML_MANAGER_QUEUE)),)
WORKER_CMD = $(PY) -m engine worker --queues $(QUEUES)
else
WORKER_CMD = $(VENV)/bin/huey_consumer engine.jobs.huey -k thread -w $(WORKERS) -m 0.5 -C
endif
export ML_MANAGER_HOME ?= $(CURDIR)/data

.PHONY: run test worker dashboard bench bench-remote bench-same-runs bench-train bench-train-cv bench-train-cv-2min bench-scale bench-cameras pretrained screenshots clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP_RUN): requirements.txt | $(PY)
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(STAMP_DEV): requirements.txt requirements-dev.txt | $(PY)
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	touch $(STAMP_RUN) $@

## run: start the worker and the dashboard (with the HTTP API under /api/v1/, token printed at start-up)
##      on http://$(HOST):$(PORT) (HOST=0.0.0.0 serves the network); Ctrl-C stops both
run: $(STAMP_RUN)
	@mkdir -p "$(ML_MANAGER_HOME)/logs"
	@echo "ML Manager data home: $(ML_MANAGER_HOME)"
	@echo "Worker log: $(ML_MANAGER_HOME)/logs/worker.log"
	@$(WORKER_CMD) $(if $(filter redis% rediss% unix%,$(ML_MANAGER_QUEUE)),,-q) \
		>>"$(ML_MANAGER_HOME)/logs/worker.log" 2>&1 & worker=$$!; \
	trap 'kill -INT $$worker 2>/dev/null; wait $$worker 2>/dev/null' EXIT INT TERM; \
	$(VENV)/bin/streamlit run server.py --server.address $(HOST) --server.port $(PORT) \
		--logger.hideWelcomeMessage true

## worker: only the background worker (training and batch inference)
worker: $(STAMP_RUN)
	@mkdir -p "$(ML_MANAGER_HOME)/logs"
	$(WORKER_CMD)

## dashboard: only the dashboard and its HTTP API
dashboard: $(STAMP_RUN)
	$(VENV)/bin/streamlit run server.py --server.address $(HOST) --server.port $(PORT) \
		--logger.hideWelcomeMessage true

## test: the whole suite (unit, real worker, AppTest, headless browser), in TEST_JOBS processes (a file
##       stays in one process, so its module fixtures are made once; files go out in collection order, which
##       tests/conftest.py starts with the slowest); TEST_JOBS=0 runs it in this one
test: $(STAMP_DEV)
	$(PY) -m pytest $(if $(filter 0,$(TEST_JOBS)),,-n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder)

## screenshots: re-take the README's screenshots (docs/screenshots/) with the end-to-end browser test
screenshots: $(STAMP_DEV)
	ML_MANAGER_SCREENSHOTS=$(CURDIR)/docs/screenshots $(PY) -m pytest tests/test_browser.py

## bench: the quick benchmarks (a few minutes; each prints its table)
bench: $(STAMP_DEV)
	$(PY) benchmarks/postprocess.py
	$(PY) benchmarks/queue.py
	$(PY) benchmarks/ui_latency.py

## bench-remote: the same short training on a local and on a remote worker, DRIVE's download, status latency
bench-remote: $(STAMP_DEV)
	$(PY) benchmarks/remote.py

## bench-same-runs: one fixed-seed training on every kind of worker, fingerprinted (OUT=file.json keeps it;
##                  compare two with .venv/bin/python benchmarks/same_runs.py --compare A B)
bench-same-runs: $(STAMP_DEV)
	$(PY) benchmarks/same_runs.py $(if $(OUT),--out $(OUT))

## bench-train: train the default config on DRIVE for 10 minutes and score it on unseen images
bench-train: $(STAMP_DEV)
	$(PY) benchmarks/train_drive.py --minutes 10

## bench-train-cv: the same, 5-fold cross-validated over all 20 DRIVE images (five 10-minute models, ~55 min)
bench-train-cv: $(STAMP_DEV)
	$(PY) benchmarks/train_drive.py --minutes 10 --folds 5

## bench-train-cv-2min: the 2-minute cross-validation, fp32 forced (~12 min)
bench-train-cv-2min: $(STAMP_DEV)
	$(PY) benchmarks/train_drive.py --minutes 2 --folds 5 --set precision=fp32

## bench-scale: the pretrained model on DRIVE photographs resized x0.75 to x6 (JPEG 80), scale auto vs none
bench-scale: $(STAMP_DEV)
	$(PY) benchmarks/scale.py

## bench-cameras: a model on held-out DRIVE images under simulated camera shifts (one column per shift)
bench-cameras: $(STAMP_DEV)
	$(PY) benchmarks/cameras.py

## pretrained: re-train the shipped model (engine/weights/drive_unet.pt) on ../shared/data's DRIVE, CHASE_DB1
##             and HRF training sets (8,000 steps: about an hour on 2 busy cores with one thread)
pretrained: $(STAMP_RUN)
	$(PY) -m engine pretrained --data ../shared/data/drive/training --data ../shared/data/chase_db1/training \
		--data ../shared/data/hrf/training --threads 1

clean-venv:
	rm -rf $(VENV)
