# Two commands do all the set-up on a fresh machine (Python 3.11): `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.install-stamp
TRACKING_URI ?= sqlite:///mlflow.db
export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_DISABLE_TELEMETRY := 1

OPTUNA_STORAGE ?= sqlite:///optuna.db

.PHONY: install run test lint ui dashboard lock clean

# The stamp makes a second install a no-op; editing requirements or the lock reinstalls.
$(STAMP): requirements.txt constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt
	touch $(STAMP)

install: $(STAMP)

run: install
	PATH="$(BIN):$$PATH" MLFLOW_TRACKING_URI=$(TRACKING_URI) \
	  $(BIN)/mlflow run . -e main --env-manager local --experiment-name quickstart
	@echo
	@echo "Compare the runs in the MLflow UI:  make ui   (or: $(VENV)/bin/mlflow ui --backend-store-uri $(TRACKING_URI))"
	@echo "then open http://127.0.0.1:5000 → experiment 'quickstart' → Training runs → expand the parent,"
	@echo "select its child runs → Compare. Classify an image with the champion:"
	@echo "  $(VENV)/bin/mlflow run . -e predict --env-manager local -P input=<image or folder>"

# Two test processes: the slow tests mostly wait on subprocesses and servers. TEST_WORKERS=0 runs in one.
TEST_WORKERS ?= 2
test: install
	PATH="$(BIN):$$PATH" $(BIN)/python -m pytest -n $(TEST_WORKERS)

lint: install
	$(BIN)/ruff check .

# MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false: no GenAI job runners (half a dozen processes) for a training UI
ui: install
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow server --backend-store-uri $(TRACKING_URI) --host 127.0.0.1 --port 5000 --workers 1

dashboard: install
	$(BIN)/optuna-dashboard $(OPTUNA_STORAGE) --host 127.0.0.1 --port 8080

lock: install
	{ echo "# Full lock of the environment resolved from requirements.txt on Python 3.11 / x86_64 (make lock rewrites it)."; \
	  $(BIN)/pip freeze --exclude-editable; } > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
