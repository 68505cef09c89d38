"""The transfer report's reading of its numbers against Kornblith, Shlens & Le (CVPR 2019): every
statement computed from the measured paired intervals (agrees, disagrees, or not resolved), none
written in. A difference between two groups is paired over the test images (the same for every arm)
and the seeds both ran: verdicts.group_delta, the statistics the comparison's own summary reads."""

from __future__ import annotations

import itertools

from scipy import stats

from pipelines.reports.stats import PairedDelta, verdict
from pipelines.reports.verdicts import group_delta, paired_rows

# ImageNet top-1 (%) of the float models, as published with EfficientNet-Lite (Google, 2020:
# github.com/tensorflow/tpu, models/official/efficientnet/lite/README.md).
PUBLISHED_TOP1 = {"timm/tf_efficientnet_lite0": 75.1, "timm/tf_efficientnet_lite1": 76.7,
                  "timm/tf_efficientnet_lite2": 77.6}
KORNBLITH = "Kornblith, Shlens & Le, *Do Better ImageNet Models Transfer Better?*, CVPR 2019"
PROBE = "linear_probe"  # the paper's fixed-feature baseline: L2 logistic regression fitted to convergence
FIXED = ("frozen", PROBE)  # policies that never train the backbone
AGREES = {"better": "agrees", "worse": "disagrees", "no clear difference": "not resolved"}


def short(backbone: str) -> str:
    return backbone.rsplit("/", 1)[-1].replace("tf_efficientnet_", "")


def pct(v: float | None, sign: str = "") -> str:
    """In %: accuracies to 0.1; signed differences to 0.01, so a CI bound just clear of zero reads so."""
    return "—" if v is None or v != v else f"{100 * v:{sign}.{2 if sign else 1}f}"


def ci(lo: float | None, hi: float | None, sign: str = "") -> str:
    return "—" if lo is None else f"[{pct(lo, sign)}, {pct(hi, sign)}]"


def said(d: PairedDelta | None) -> str:
    """A difference in one phrase: +4.83 pp [+3.10, +6.50]."""
    return "no shared seed" if d is None else f"{pct(d.mean, '+')} {ci(*d.interval, '+')}"


def reading(d: PairedDelta | None) -> str:
    if d is None or d.interval[0] is None:
        return "no interval"
    return AGREES[verdict(d)]


def tally(deltas: list[PairedDelta | None]) -> str:
    words = [reading(d) for d in deltas]
    return (f"{words.count('agrees')} agree, {words.count('disagrees')} disagree and "
            f"{words.count('not resolved') + words.count('no interval')} are not resolved")


def claim_a(rows: list[dict], meta: dict) -> list[str]:
    """(a) Fine-tuning beats fixed features: each policy that trains the backbone against the linear
    probe (the paper's baseline) and against frozen (this project's cheap head), same backbone."""
    lines = [f"**(a) Fine-tuning beats fixed features** ({KORNBLITH}), more so on targets far from ImageNet; "
             "Fashion-MNIST (grayscale 28 px product photos) is far. The paper's fixed-feature baseline is an L2 "
             f"logistic regression fitted to convergence, here `{PROBE}`. Each fine-tuning policy against it, and "
             "against `frozen` (a linear head trained for the same epochs as fine-tuning), paired over the test "
             f"images and seeds, in percentage points with the 95% CI:", ""]
    found = {}
    for reference in FIXED:
        found[reference] = [p for p in paired_rows(rows, reference) if p["freeze"] not in FIXED]
    for backbone in meta["order"]["backbone"]:
        parts = [f"{p['freeze']} {said(p['delta'])} vs {reference}: {reading(p['delta'])}"
                 for reference in FIXED for p in found[reference] if p["backbone"] == backbone]
        lines += [f"- {short(backbone)}: " + "; ".join(parts) + "."] if parts else []
    lines += [""] + [f"Against {reference}: of {len(found[reference])} backbone × policy pairs, "
                     f"{tally([p['delta'] for p in found[reference]])}." for reference in FIXED if found[reference]]
    lines += ["", "The \"more so when far from ImageNet\" half needs a near-ImageNet dataset beside this one, which "
              "this report does not run.", ""]
    return lines


def order_row(policy: str, chain: list[dict], label: str = "") -> str:
    """One policy's backbones in published order: accuracies, measured order, each neighbour's paired
    difference (the better ImageNet model minus the one before it), Spearman ρ."""
    measured = " < ".join(short(r["backbone"]) for r in sorted(chain, key=lambda r: r["test_acc"]))
    if all(a["test_acc"] < b["test_acc"] for a, b in itertools.pairwise(chain)):
        order = f"{measured}: agrees"
    else:
        reversed_ = all(a["test_acc"] > b["test_acc"] for a, b in itertools.pairwise(chain))
        order = f"{measured}: disagrees ({'reversed' if reversed_ else 'other order'})"
    steps = [(a, b, group_delta(b, a)) for a, b in itertools.pairwise(chain)]
    words = [reading(d) for _, _, d in steps]
    step_text = "; ".join(f"{short(b['backbone'])} − {short(a['backbone'])} {said(d)}: {w}"
                          for (a, b, d), w in zip(steps, words, strict=True))
    resolved = ("the order agrees" if set(words) == {"agrees"} else "the order disagrees" if "disagrees" in words
                else "the order is not resolved by this experiment")
    rho = stats.spearmanr([PUBLISHED_TOP1[r["backbone"]] for r in chain],
                          [r["test_acc"] for r in chain]).statistic if len(chain) >= 3 else None
    accs = " · ".join(f"{short(r['backbone'])} {pct(r['test_acc'])}" for r in chain)
    return (f"| {policy}{label} | {accs} | {order} | {step_text}; so {resolved} | "
            f"{'—' if rho is None or rho != rho else f'{rho:+.2f}'} |")


def claim_b(rows: list[dict], native_rows: list[dict], meta: dict) -> list[str]:
    """(b) Better ImageNet models transfer better: per policy, the backbones' order against their
    published ImageNet top-1, read from paired neighbour differences, at the grid's size and native."""
    published = sorted(PUBLISHED_TOP1, key=PUBLISHED_TOP1.get)
    lines = ["**(b) Better ImageNet models transfer better** (same paper; its clearest evidence is on fixed "
             "features). Published ImageNet top-1: " + ", ".join(f"{short(b)} {PUBLISHED_TOP1[b]} %" for b in published)
             + ", so the expected order is " + " < ".join(map(short, published)) + ". Per policy, the mean test "
             "accuracy (%), the measured order, and each step up the published order as a paired difference "
             "(percentage points, 95% CI) that agrees only when its CI is above 0:", "",
             "| policy | mean test acc (%) | measured order | paired steps | Spearman ρ |", "|---|---|---|---|---|"]
    for group, label in ((rows, f" at {meta['data.image_size']} px"), (native_rows, " at native size")):
        index = {(r["backbone"], r["freeze"]): r for r in group}
        for policy in dict.fromkeys(r["freeze"] for r in group):
            chain = [index[(b, policy)] for b in published if (b, policy) in index]
            if len(chain) >= 2:
                lines.append(order_row(policy, chain, label))
    lines += ["", "With three backbones ρ can only be ±1 or ±0.5: a summary of the order, not a test; the paired "
              "steps are the test.", ""]
    return lines


def published_findings(rows: list[dict], native_rows: list[dict], meta: dict) -> list[str]:
    """Kornblith et al.'s two claims, each read off the measured paired intervals, and the caveats."""
    sizes = ", ".join(f"{short(b)} {s}" for b, s in meta.get("native_sizes", {}).items())
    native = (f"the fixed-feature arms ran again at each backbone's native size ({sizes} px) with seed 0"
              if sizes else "no arm ran at the backbones' native sizes")
    return ["## Against the published findings", "", *claim_a(rows, meta), *claim_b(rows, native_rows, meta),
            f"**Caveats.** The grid's arms see {meta['data.image_size']} px inputs, below each backbone's native "
            f"size; {native}. Each split is capped at {meta['data.max_samples']} images (train "
            f"{meta['data.n_train']}, test {meta['data.n_test']}); epochs: {meta['train.epochs']}, at one lr "
            f"({meta['train.lr']}); {len(meta['order']['seeds'])} seeds. The intervals cover the test images and "
            "the seeds, not other datasets, learning rates or epoch budgets: \"not resolved\" means this experiment "
            f"cannot tell, not that there is no difference. `{PROBE}` gives the same model for every seed (its fit "
            "is deterministic on cached features), so its seeds repeat one value; its differences still pair "
            "seed by seed with the other policy's."]
