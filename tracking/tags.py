"""Tag names that one module writes and another reads back: one spelling, in one place."""

PARENT = "mlflow.parentRunId"  # MLflow's own: a child run's parent
RUN_NAME = "mlflow.runName"
# every run: what the MLflow UI groups and compares by
BACKBONE, SOURCE, WEIGHTS, FREEZE = "backbone", "source", "weights", "freeze"
DATASET, SEED, SPLIT_DIGEST, DEVICE, FEATURE_CACHE = "dataset", "seed", "split_digest", "device", "feature_cache"
# a compare.lr variant's train.lr as its name writes it (3e-4), absent without compare.lr; not "lr", the per-epoch
# metric of the head's scheduled lr
LR = "lr_variant"
EXPERIMENT_FILE = "experiment_file"  # on a study's parent: the experiment file it ran
OPTUNA_DIRECTION = "optuna.direction"  # on a search's parent: maximize/minimize per objective
ENTRY_POINT = "entry_point"  # train | pretrain | compare | search | rank
ERROR = "error"  # the one-line reason a run ended FAILED or KILLED
CONFIG_DIGEST = "config_digest"
STUDY = "optuna.study"  # a parent's and its children's study (a comparison is a study too)
STORAGE_ID = "optuna.storage_id"  # which Optuna storage, without credentials
TRIAL = "optuna.trial"
OPTUNA_STATE = "optuna.state"  # COMPLETE | PRUNED | FAIL, mirrored on the child
FAIL_REASON = "optuna.fail_reason"
COMPARISON = "comparison"  # an arm's comparison name
ARM = "arm"
WORKER = "cluster.worker"  # on a child: the engine's worker that ran it (local:<n>, ray:<node>, slurm:<job>@<node>)
WORKER_OF = "worker_of"  # on an `mlflow run` launcher's run: the parent its worker served
DUPLICATE_OF = "duplicate_of"  # a parent candidate that lost the election; a trial run that reused another's
CHAMPION = "champion"  # on a parent: the models:/ URI of its best child
BEST_RUN_ID = "best_run_id"
SOURCE_RUN_ID = "source_run_id"  # on a registered model version: the run that logged it
RESUMED_FROM_RUN = "resumed_from_run"
RESUMED_FROM_EPOCH = "resumed_from_epoch"  # a resumed run: the last epoch its checkpoint held
GIT_COMMIT = "git_commit"
VERSION_PREFIX = "version."  # + a package name: the versions a run trained with (version.freezeframe, version.torch)
# on a comparison's parent
ARMS_TOTAL, ARMS_FAILED, BEST_ARM = "arms_total", "arms_failed", "best_arm"
ARMS_PRUNED = "arms_pruned"  # arms compare.racing stopped (not counted as failed, nor in the statistics)
# the backbone · policy with the best mean test accuracy, and those whose paired difference to it is not clear
BEST_GROUP, TIED_WITH_BEST = "best_group", "tied_with_best"
SCREENED_OUT = "screened_out"  # backbones that compare.screen left to their fixed-feature arms ("none")
# on a ranking's parent: the score it orders by, and the backbones' weight sources in that order, best first
# ("timm/tf_efficientnet_lite2@imagenet > torchvision/resnet18@none")
RANK_BY, RANKING = "rank_by", "ranking"
# on a search's parent: trials.<state> counts, the best trial and its params (best.<param>)
TRIALS_PREFIX, BEST_TRIAL, BEST_PARAM_PREFIX = "trials.", "best_trial", "best."
MODEL_WEIGHTS = "freezeframe.weights"  # on a registered model version: how its weights/ came to be
DATASET_ROWS = "rows"  # on a run's dataset input: the split's size
