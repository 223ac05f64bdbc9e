# ml_assets: every command a user needs. State lives in $(ML_ASSETS_HOME) (default .ml_assets/).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export ML_ASSETS_HOME ?= $(CURDIR)/.ml_assets
export DAGSTER_HOME ?= $(ML_ASSETS_HOME)/dagster
# make demo IMAGES=3000 FOLDS=5 EPOCHS=20 MODELS=classifier runs it bigger or narrower;
# EPOCHS empty: each model kind's own demo setting. make train DATASET=name runs the pipeline on
# your own data in the landing location (ml-assets ingest PATH --name name puts it there);
# DATASET empty: every dataset there.
IMAGES ?= 600
FOLDS ?= 3
EPOCHS ?=
MODELS ?= classifier,yolo
DATASET ?=
# k of the fold partitions and the model kinds the code location builds, read when it loads:
# demo, train and ui agree by construction (ui automates only the kinds the demo trains). Set for
# those targets only: the tests build every kind.
demo train ui: export ML_ASSETS_FOLDS := $(FOLDS)
demo train ui: export ML_ASSETS_KINDS := $(MODELS)

.PHONY: setup demo train ui mlflow test test-fast lint format bench clean

setup: $(STAMP) $(DAGSTER_HOME)/dagster.yaml

# torch first, from the pinned versions on this machine's wheel cache, then the project under
# pinned constraints, then the headless OpenCV build over the GUI one ultralytics pulls in.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	$(PY) -m pip install -q --force-reinstall --no-deps \
	  "opencv-python-headless==$$($(PY) -m pip show opencv-python-headless | sed -n 's/^Version: //p')"
	$(PY) -c "import cv2, torch, ultralytics, timm, peft, dagster; print('environment ready: torch', torch.__version__)"
	touch $@

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

demo: setup
	$(VENV)/bin/ml-assets demo --images $(IMAGES) --folds $(FOLDS) --models $(MODELS) \
	  $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(DATASET),--dataset $(DATASET))

train: setup
	$(VENV)/bin/ml-assets train --folds $(FOLDS) --models $(MODELS) \
	  $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(DATASET),--dataset $(DATASET))

MLFLOW_PORT ?= 5000
demo train ui: export ML_ASSETS_MLFLOW_UI ?= http://127.0.0.1:$(MLFLOW_PORT)
UI_PORT ?= 3000
MLFLOW_UI = $(CURDIR)/$(VENV)/bin/mlflow ui --host 127.0.0.1 --port $(MLFLOW_PORT) \
  --backend-store-uri sqlite:///$(ML_ASSETS_HOME)/mlflow/mlflow.db

# Dagster (webserver and daemon) and, beside it, the MLflow UI that the metadata's mlflow_run
# links open, both on 127.0.0.1 only (neither has a login; deployments: deploy/k8s/README.md);
# Ctrl-C stops both. dagster dev runs in $(DAGSTER_HOME), the folder of the instance
# settings it uses (from the checkout it would warn that ./dagster.yaml "will not be used"), and
# without the notice that `dg dev` supersedes `dagster dev` (dg is not part of this project).
ui: setup
	@mkdir -p $(ML_ASSETS_HOME)/mlflow
	@echo "Dagster UI: http://127.0.0.1:$(UI_PORT), MLflow UI: http://127.0.0.1:$(MLFLOW_PORT) (loopback only; MLflow log: $(ML_ASSETS_HOME)/mlflow/ui.log)"
	@$(VENV)/bin/ml-assets ready-instance
	@$(MLFLOW_UI) > $(ML_ASSETS_HOME)/mlflow/ui.log 2>&1 & mlflow_ui=$$!; \
	trap 'kill $$mlflow_ui 2>/dev/null' EXIT; \
	cd "$(DAGSTER_HOME)" && PYTHONWARNINGS='ignore:Function `dev_command` is superseded' \
	  "$(CURDIR)/$(VENV)/bin/dagster" dev -h 127.0.0.1 -p $(UI_PORT) -w "$(CURDIR)/workspace.yaml"

# The MLflow UI alone (make ui starts it too), on loopback only like make ui.
mlflow: setup
	$(MLFLOW_UI)

# lint-imports: imports run one way (the layers in pyproject.toml's [tool.importlinter]).
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

test: lint
	$(VENV)/bin/pytest

test-fast: lint
	$(VENV)/bin/pytest -m "not slow"

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: setup
	$(PY) benchmarks/formats.py
	$(PY) benchmarks/evaluation.py
	$(PY) benchmarks/sensor.py
	$(PY) benchmarks/training.py
	$(PY) benchmarks/lora.py
	$(PY) benchmarks/scale.py
	$(PY) benchmarks/store.py

clean:
	rm -rf $(ML_ASSETS_HOME)
