"""Every key freezeframe stores in an Optuna study, in one place. Other workers, other processes,
reruns and optuna-dashboard read them back, so each has one spelling."""

# A trial's user attributes.
RUN_ATTR = "mlflow_run_id"  # its MLflow child run
OWNER_ATTR = "worker"  # {"host", "pid"} of the process running the trial
REASON_ATTR = "fail_reason"  # why it failed, in one line
RETRY_ATTR = "retry_of"  # the trial number a queued-again trial retries: its checkpoint may be resumed
TWIN_ATTR = "duplicate_of"  # a search trial that reused a finished trial's result: that trial's number
ARM_ATTR = "arm"  # a comparison arm's readable name
DIGEST_ATTR = "config_digest"  # a comparison arm's config digest: which grid it belongs to
# a comparison arm's axes (the Arm dataclass's fields, as queue_arms stores them): racing groups by them
BACKBONE_ATTR, WEIGHTS_ATTR, FREEZE_ATTR, SEED_ATTR = "backbone", "weights", "freeze", "seed"
LR_ATTR = "lr"  # a compare.lr variant's train.lr (absent without compare.lr): racing lets a seed's variants race
# Optuna's own system attribute: where RetryHeartbeatStaleTrialCallback records the trial a queued copy retries.
OPTUNA_FAILED_TRIAL = "failed_trial"

# A study's user attributes (optuna-dashboard lists them with the study: the way back to MLflow).
KIND_ATTR = "freezeframe.kind"  # compare | rank | search: a study name means one kind of work
EXPERIMENT_ID_ATTR, PARENT_RUN_ID_ATTR = "mlflow_experiment_id", "mlflow_parent_run_id"
EXPERIMENT_URL_ATTR, PARENT_RUN_URL_ATTR = "mlflow_experiment_url", "mlflow_parent_run_url"

# A study's system attributes: not for people. + ceiling_key: a batch-size ceiling's measurement, kept for
# reruns and other workers (as a user attribute it pushed the MLflow links off the dashboard's first page).
CEILING_ATTR = "freezeframe.ceiling:"
