"""What an arm or a trial run is, as one frozen value: `ChildRun`.

A comparison's arm and a search's trial are the same thing to everything below the objective: a config
to train as a child run of the study's parent, tagged, reporting each epoch to its Optuna trial, judged
by the study's pruner. The value is passed whole: to the function that trains it (freezeframe.child_run's
run_child) and, as JSON, to the N processes that train it data-parallel (`python -m freezeframe.child_run`),
which rebuild the trial and its pruner from it. Nothing in it is pickled.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import optuna

from pipelines.config import RunConfig, from_dict, to_dict
from pipelines.studies.plan import PrunerSpec
from pipelines.studies.storage import make_storage
from pipelines.studies.worker import EpochReporter, trial_id


@dataclass(frozen=True)
class Reporting:
    """How each epoch reaches the trial (an EpochReporter's settings)."""
    metric: str
    prune: bool = True  # may the pruner stop the run (a comparison prunes only when it races)
    last_epoch: int | None = None  # never stopped at this epoch: it has finished


@dataclass(frozen=True)
class ChildRun:
    """One arm or trial: what to train and where its run and its trial live."""
    cfg: RunConfig
    entry_point: str  # compare | rank | search: the kind of the child run and of its parent
    parent_run_id: str
    tags: dict[str, str]  # the run's own tags (the arm's name, say); tracking adds the study's and trial's
    storage_url: str
    study_name: str
    trial_number: int
    pruner: PrunerSpec
    reporting: Reporting

    def reporter(self, trial: optuna.Trial) -> EpochReporter:
        r = self.reporting
        return EpochReporter(trial, r.metric, prune=r.prune, last_epoch=r.last_epoch)

    def open_trial(self) -> optuna.Trial:
        """The trial, opened from another process (an arm's process 0): the same storage, the study's pruner.
        No heartbeat and no tell here: the worker that owns the trial, alive meanwhile, does both."""
        storage = make_storage(self.storage_url)
        study = optuna.load_study(study_name=self.study_name, storage=storage, pruner=self.pruner.build())
        return optuna.Trial(study, trial_id(study, storage, self.trial_number))

    def to_json(self) -> str:
        """As JSON (the storage URL may hold a password: the caller writes it where only its user reads)."""
        return json.dumps({**vars(self), "cfg": to_dict(self.cfg), "pruner": asdict(self.pruner),
                           "reporting": asdict(self.reporting)})

    @classmethod
    def from_json(cls, text: str) -> ChildRun:
        """to_json's value again, its config typed and validated as a loaded experiment is."""
        raw = json.loads(text)
        return cls(**{**raw, "cfg": from_dict(raw["cfg"], "a child run's description"),
                      "pruner": PrunerSpec(**raw["pruner"]), "reporting": Reporting(**raw["reporting"])})
