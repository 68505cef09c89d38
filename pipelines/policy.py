"""The freeze policy as one value, parsed once from a run's config and asked wherever a run needs to
know what trains and when: the freezing of a network, the optimizer's layer-decay groups, the
thaw schedule, whether frozen features can be cached, the batch-size ceiling's probe.

Policies: `unfrozen` | `frozen` (head only) | `last_n:K` (the last K stages plus the head) |
`gradual` (start frozen, thaw stages before the epochs of `model.unfreeze_at`, last stage first) |
`layer_decay:F` (everything trains, each layer group at F times the lr of the one after it) |
`linear_probe` (frozen backbone; the head is an L2 multinomial logistic regression fitted to convergence
on the fixed features, its C chosen on validation; `linear_probe:C1,C2,...` names the grid of C) |
`bias` (every bias of the backbone, BitFit, plus the head) | `norm` (the normalisation layers' affine
parameters plus the head; TinyTL's and Frankle et al.'s cheap middle ground) | `stage:K` (surgical
fine-tuning, Lee et al. 2023: stage K alone, 0 the input side, plus the head) | `lp_ft` (Kumar et al. 2022:
the head starts from the converged linear probe, then every layer trains; `lp_ft:<policy>` starts the head
from the probe, then trains as <policy> does, `lp_ft:last_n:2` say).
`model.bn` says what BatchNorm layers of frozen stages do in training mode (pipelines/models/freezing.py).
Nothing here needs torch: the config validates a policy without building a model.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

from pipelines.errors import ConfigError

POLICIES = ("unfrozen", "frozen", "last_n:K", "gradual", "layer_decay:F", "linear_probe[:C1,C2,...]", "bias", "norm",
            "stage:K", "lp_ft[:<policy>]")
# The probe's default grid of inverse L2 strengths, 1e-3..1e3 in 10 log steps (Kornblith et al. 2019 search a
# wider one; on these datasets the chosen C falls inside this one, and each value costs one L-BFGS fit).
PROBE_C = tuple(float(f"{c:.3g}") for c in (10 ** (-3 + 6 * i / 9) for i in range(10)))
BN_MODES = ("frozen", "train")


@dataclass(frozen=True)
class Policy:
    kind: str  # unfrozen | frozen | last_n | gradual | layer_decay | linear_probe | bias | norm | stage
    n: int = 0  # last_n: how many stages train; stage: which one (0: the input side)
    decay: float = 0.0  # layer_decay: the lr factor from one layer group to the one before it
    bn: str = "frozen"  # frozen stages' BatchNorm: frozen (held in eval) | train (batch statistics)
    unfreeze_at: tuple[int, ...] = ()  # gradual: the epochs before which the next stage thaws
    unfreeze_lr_mult: float = 1.0  # gradual: a thawed stage trains at lr * this
    probe_c: tuple[float, ...] = ()  # linear_probe, lp_ft: the grid of C (inverse L2 strength) tried on validation
    # lp_ft: the head starts from the converged linear probe, then the policy of `kind` trains (LP-FT is a
    # start for the head, not a way of choosing what trains: one flag, so every policy's rules apply unchanged)
    probe_head: bool = False

    @classmethod
    def parse(cls, text: str, bn: str = "frozen", unfreeze_at: tuple[int, ...] = (),
              unfreeze_lr_mult: float = 1.0) -> Policy:
        """The one reading of a policy string; anything else is a one-line ConfigError."""
        if bn not in BN_MODES:
            raise ConfigError(f"model.bn must be one of {BN_MODES}, got '{bn}'")
        rest = {"bn": bn, "unfreeze_at": tuple(unfreeze_at), "unfreeze_lr_mult": unfreeze_lr_mult}
        if text in ("lp_ft:", "lp_ft:unfrozen"):  # one spelling per policy: one digest, one arm
            raise ConfigError(f"freeze policy '{text}' is written lp_ft")
        if text == "lp_ft" or text.startswith("lp_ft:"):
            try:
                inner = cls.parse(text.removeprefix("lp_ft").removeprefix(":") or "unfrozen", **rest)
            except ConfigError as exc:
                raise ConfigError(f"freeze policy '{text}': {exc}") from None
            return _lp_ft(inner, text)
        if text in ("unfrozen", "frozen", "gradual", "bias", "norm"):
            return cls(text, **rest)
        match = re.fullmatch(r"last_n:(\d+)", text)
        if match and int(match[1]) >= 1:
            return cls("last_n", n=int(match[1]), **rest)
        match = re.fullmatch(r"stage:(\d+)", text)
        if match:
            return cls("stage", n=int(match[1]), **rest)
        if text.startswith("layer_decay:"):
            try:
                decay = float(text.removeprefix("layer_decay:"))
            except ValueError:
                decay = math.nan
            if not 0 < decay < 1:  # NaN fails this too
                raise ConfigError(f"freeze policy '{text}': the layer decay factor must be a number in (0, 1), "
                                  "e.g. layer_decay:0.7 (1 would be plain unfrozen)")
            return cls("layer_decay", decay=decay, **rest)
        if text == "linear_probe" or text.startswith("linear_probe:"):
            return cls("linear_probe", probe_c=_probe_grid(text), **rest)
        raise ConfigError(f"unknown freeze policy '{text}' (valid: {', '.join(POLICIES)}, with K >= 1 for last_n, "
                          ">= 0 for stage)")

    def __str__(self) -> str:
        if self.probe_head:
            inner = str(replace(self, probe_head=False))
            return "lp_ft" if inner == "unfrozen" else f"lp_ft:{inner}"
        if self.kind in ("last_n", "stage"):
            return f"{self.kind}:{self.n}"
        if self.kind == "linear_probe" and self.probe_c != PROBE_C:
            return f"linear_probe:{','.join(f'{c:g}' for c in self.probe_c)}"
        return f"layer_decay:{self.decay:g}" if self.kind == "layer_decay" else self.kind

    @property
    def trains_backbone(self) -> bool:
        """Whether any backbone parameter trains at some point (`frozen` and `linear_probe` fit the head alone)."""
        return self.kind not in ("frozen", "linear_probe")

    @property
    def holds_batchnorm(self) -> bool:
        return self.bn == "frozen"

    @property
    def layer_decay(self) -> float | None:
        """The layer-wise lr decay the optimizer's groups take, or None for one group per lr."""
        return self.decay if self.kind == "layer_decay" else None

    def thawed(self) -> Policy:
        """The policy's last, largest training state: gradual ends with its thawed stages training."""
        return replace(self, kind="unfrozen") if self.kind == "gradual" else self

    def check_schedule(self, epochs: int) -> None:
        """gradual's thaw epochs: increasing, within 2..epochs (a stage thaws before the epoch named)."""
        at = self.unfreeze_at
        if self.kind == "gradual" and (not at or list(at) != sorted(set(at)) or at[0] < 2 or at[-1] > epochs):
            raise ConfigError(f"model.unfreeze_at {list(at)} must be increasing epochs within 2..train.epochs "
                              f"({epochs}): a stage thaws before the epoch named")

    @property
    def part(self) -> str | None:
        """bias | norm: the policy trains that part of every stage (chosen by module type), not whole stages."""
        return self.kind if self.kind in ("bias", "norm") else None

    def trainable_stages(self, stages: int, model: str) -> range:
        """Which of a network's `stages` (input side first, 0 the first) train whole from the start."""
        if self.kind == "last_n" and self.n > stages:
            raise ConfigError(f"freeze last_n:{self.n} but {model} has only {stages} stages")
        if self.kind == "stage" and self.n >= stages:
            raise ConfigError(f"freeze stage:{self.n} but {model} has {stages} stages: stage:0 to stage:{stages - 1}")
        if self.kind == "gradual" and len(self.unfreeze_at) > stages:
            raise ConfigError(f"gradual: {len(self.unfreeze_at)} thaw epochs (model.unfreeze_at) but "
                              f"{model} has only {stages} stages")
        if self.kind == "stage":
            return range(self.n, self.n + 1)
        first = {"unfrozen": 0, "layer_decay": 0, "last_n": stages - self.n}.get(self.kind, stages)
        return range(first, stages)

    def first_trained_stage(self, stages: int) -> int:
        """The first stage any of whose parameters ever trains (`stages`: none does): the stages before it
        are a fixed prefix whose output can be computed once (pipelines/models/prefix.py)."""
        if self.part:
            return 0
        if self.kind == "gradual":
            return stages - len(self.unfreeze_at)
        return self.trainable_stages(stages, "the network").start

    def thaw_schedule(self, stages: list[list[str]]) -> dict[int, list[str]]:
        """gradual's schedule: epoch → parameter names to thaw before it, the last stage first, then inwards."""
        return {epoch: stages[-(i + 1)] for i, epoch in enumerate(self.unfreeze_at)}


def fitted_without_lr(text: str) -> bool:
    """linear_probe (any grid of C): the head is one L-BFGS fit on fixed features, with no lr to vary, no
    training curve to race and nothing to spread over devices."""
    return Policy.parse(text).kind == "linear_probe"


def _lp_ft(inner: Policy, text: str) -> Policy:
    """lp_ft's policy: the inner one with its head started from the probe (the default grid of C)."""
    if inner.probe_head or not inner.trains_backbone:
        raise ConfigError(f"freeze policy '{text}': lp_ft:<policy> fine-tunes after the probe, so <policy> must train "
                          "the backbone (not frozen, linear_probe or another lp_ft); linear_probe is the probe alone")
    return replace(inner, probe_head=True, probe_c=PROBE_C)


def _probe_grid(text: str) -> tuple[float, ...]:
    """linear_probe's C values: the default grid, or the ones after the colon (each > 0), ascending (the
    fits warm-start from the strongest penalty)."""
    given = text.removeprefix("linear_probe").removeprefix(":")
    if not given:
        return PROBE_C
    try:
        values = [float(v) for v in given.split(",")]
    except ValueError:
        values = [math.nan]
    if not all(v > 0 and math.isfinite(v) for v in values):  # NaN fails this too
        raise ConfigError(f"freeze policy '{text}': linear_probe:C1,C2,... takes numbers > 0 (inverse L2 strengths), "
                          "e.g. linear_probe:0.01,0.1,1,10")
    return tuple(sorted(set(values)))
