"""Tag names that one module writes and another reads back: one spelling, in one place."""

PARENT = "mlflow.parentRunId"  # MLflow's own: a child run's parent
RUN_NAME = "mlflow.runName"
# every run: what the MLflow UI groups and compares by
BACKBONE, SOURCE, WEIGHTS, FREEZE = "backbone", "source", "weights", "freeze"
DATASET, SEED, SPLIT_DIGEST, DEVICE, FEATURE_CACHE = "dataset", "seed", "split_digest", "device", "feature_cache"
ENTRY_POINT = "entry_point"  # train | pretrain | compare | search
ERROR = "error"  # the one-line reason a run ended FAILED or KILLED
CONFIG_DIGEST = "config_digest"
STUDY = "optuna.study"  # a parent's and its children's study (a comparison is a study too)
STORAGE_ID = "optuna.storage_id"  # which Optuna storage, without credentials
TRIAL = "optuna.trial"
OPTUNA_STATE = "optuna.state"  # COMPLETE | PRUNED | FAIL, mirrored on the child
FAIL_REASON = "optuna.fail_reason"
COMPARISON = "comparison"  # an arm's comparison name
ARM = "arm"
WORKER_OF = "worker_of"  # on an `mlflow run` launcher's run: the parent its worker served
DUPLICATE_OF = "duplicate_of"  # a parent candidate that lost the election; a trial run that reused another's
CHAMPION = "champion"  # on a parent: the models:/ URI of its best child
BEST_RUN_ID = "best_run_id"
SOURCE_RUN_ID = "source_run_id"  # on a registered model version: the run that logged it
RESUMED_FROM_RUN = "resumed_from_run"
