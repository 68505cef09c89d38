"""Racing a comparison's arms (`compare.racing: successive_halving`): each arm reports its monitored
metric per epoch, and Optuna's SuccessiveHalvingPruner stops one that is not in the top third of the
arms that reached the same rung (epochs 1, 3, 9, ...), as search's pruning does.

Three rules make it fit a comparison:
- An arm is judged against the arms of other backbone × policy groups, not its group's other seeds:
  they are the same experiment again, and ranking them against each other would stop a group for its
  seed noise.
- With compare.lr, a variant is judged against its siblings too (the other lr variants of its own
  backbone · policy · seed): everything but the lr is held, so the one behind them is the poor lr, which
  is what racing an lr search should stop. Variants of the group's other seeds stay out, whatever their lr
  (seed noise again). A variant behind the other groups stops as an arm does without compare.lr. Judged
  at epochs 1, 3, 9, a small lr that starts slow but would end best can be stopped: the price of racing.
- A linear_probe arm never sets a rung's bar: its one value is final (a converged fit), while every
  other arm at that rung is still training.
Arms that never train the backbone are queued first (arms.queue_arms), so their values are in when the
expensive arms reach their first rung. An arm is never stopped at its last epoch: it has finished.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial

from pipelines.policy import fitted_without_lr
from pipelines.studies.keys import BACKBONE_ATTR, FREEZE_ATTR, LR_ATTR, SEED_ATTR, WEIGHTS_ATTR

RACES = ("none", "successive_halving")


def one_step(trial: FrozenTrial) -> bool:
    """A linear_probe arm reports one final value (a converged fit), never a training curve."""
    freeze = trial.user_attrs.get(FREEZE_ATTR)
    return freeze is not None and fitted_without_lr(freeze)


def group_of(trial: FrozenTrial) -> tuple:
    """An arm's backbone × weights × policy, from the attributes queue_arms gave its trial."""
    attrs = trial.user_attrs
    return attrs.get(BACKBONE_ATTR), attrs.get(WEIGHTS_ATTR), attrs.get(FREEZE_ATTR)


def siblings(a: FrozenTrial, b: FrozenTrial) -> bool:
    """Two compare.lr variants of one backbone × weights × policy × seed, at different lrs (a retried arm's
    copy is no sibling of the arm: the same lr)."""
    lr_a, lr_b = a.user_attrs.get(LR_ATTR), b.user_attrs.get(LR_ATTR)
    return None not in (lr_a, lr_b) and lr_a != lr_b and group_of(a) == group_of(b) \
        and a.user_attrs.get(SEED_ATTR) == b.user_attrs.get(SEED_ATTR)


class _Rivals:
    """The study as the pruner sees it: `get_trials` without the judged arm's own group (but with its lr
    siblings) and without one-step arms; everything else (storage, direction) is the study's."""

    def __init__(self, study: optuna.Study, judged: FrozenTrial):
        self._study, self._group, self._judged = study, group_of(judged), judged

    def get_trials(self, *args, **kwargs) -> list[FrozenTrial]:
        return [t for t in self._study.get_trials(*args, **kwargs) if t.number == self._judged.number or (
            not one_step(t) and (group_of(t) != self._group or siblings(t, self._judged)))]

    def __getattr__(self, name: str):
        return getattr(self._study, name)


class RivalsPruner(optuna.pruners.BasePruner):
    """Optuna's successive halving over the arms of other groups and an lr variant's siblings (see the
    module's docstring)."""

    def __init__(self):
        # rungs at epochs 1, 3, 9, ...: at each, an arm goes on only in the top third of its rivals there
        self._inner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if one_step(trial):
            return False
        return self._inner.prune(_Rivals(study, trial), trial)


def racing_pruner(race: str) -> optuna.pruners.BasePruner:
    return RivalsPruner() if race == "successive_halving" else optuna.pruners.NopPruner()
