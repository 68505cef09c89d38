"""The transfer report's reading of its numbers against Kornblith, Shlens & Le (CVPR 2019): every
statement computed from the measured intervals (agrees, disagrees, or not resolved), none written in."""

from __future__ import annotations

import itertools

from scipy import stats

from pipelines.reports.stats import verdict

# ImageNet top-1 (%) of the float models, as published with EfficientNet-Lite (Google, 2020:
# github.com/tensorflow/tpu, models/official/efficientnet/lite/README.md), and their native input sizes.
PUBLISHED_TOP1 = {"timm/tf_efficientnet_lite0": 75.1, "timm/tf_efficientnet_lite1": 76.7,
                  "timm/tf_efficientnet_lite2": 77.6}
NATIVE_SIZE = {"timm/tf_efficientnet_lite0": 224, "timm/tf_efficientnet_lite1": 240, "timm/tf_efficientnet_lite2": 260}
KORNBLITH = "Kornblith, Shlens & Le, *Do Better ImageNet Models Transfer Better?*, CVPR 2019"

def short(backbone: str) -> str:
    return backbone.rsplit("/", 1)[-1].replace("tf_efficientnet_", "")


def pct(v: float | None, sign: str = "") -> str:
    """In %: accuracies to 0.1; signed differences to 0.01, so a CI bound just clear of zero reads so."""
    return "—" if v is None or v != v else f"{100 * v:{sign}.{2 if sign else 1}f}"


def ci(lo: float | None, hi: float | None, sign: str = "") -> str:
    return "—" if lo is None else f"[{pct(lo, sign)}, {pct(hi, sign)}]"


def ci_overlap(a: dict, b: dict) -> str:
    """Whether two groups' 95% CIs of mean test acc are apart, overlap, or undefined (one seed)."""
    if a["test_acc_ci_lo"] is None or b["test_acc_ci_lo"] is None:
        return "undefined"
    apart = a["test_acc_ci_hi"] < b["test_acc_ci_lo"] or b["test_acc_ci_hi"] < a["test_acc_ci_lo"]
    return "apart" if apart else "overlap"


def published_findings(rows: list[dict], paired: list[dict], meta: dict) -> list[str]:
    """Kornblith et al.'s two claims, each read off the measured intervals: agree, disagree or unresolved."""
    lines = ["## Against the published findings", "", f"**(a) Fine-tuning beats fixed features** ({KORNBLITH}), "
             "more so on targets far from ImageNet; Fashion-MNIST (grayscale 28 px product photos) is far. Each "
             "fine-tuning policy against frozen, paired on seeds (percentage points, 95% CI):", ""]
    readings = {"better": "agrees", "worse": "disagrees", "no clear difference": "inconclusive at this sample size"}
    for backbone in meta["order"]["backbone"]:
        parts = [f"{p['freeze']} {pct(p['delta'].mean, '+')} {ci(p['delta'].lo, p['delta'].hi, '+')}: "
                 + (readings[verdict(p["delta"])] if p["delta"].lo is not None else "no interval (one shared seed)")
                 for p in paired if p["backbone"] == backbone]
        lines += [f"- {short(backbone)}: " + "; ".join(parts) + "."] if parts else []
    tally = [verdict(p["delta"]) for p in paired]
    lines += ["", f"Of {len(paired)} backbone × policy pairs, {tally.count('better')} agree, "
              f"{tally.count('worse')} disagree and {tally.count('no clear difference')} are inconclusive. The "
              "\"more so when far from ImageNet\" half needs a near-ImageNet dataset beside this one, which this "
              "report does not run.", ""]
    published = sorted(PUBLISHED_TOP1, key=PUBLISHED_TOP1.get)
    lines += ["**(b) Better ImageNet models transfer better** (same paper). Published ImageNet top-1: "
              + ", ".join(f"{short(b)} {PUBLISHED_TOP1[b]} %" for b in published) + ", so the expected order is "
              + " < ".join(map(short, published)) + ". Per policy, the measured mean test accuracy:", "",
              "| policy | mean test acc (%) | measured order | neighbouring 95% CIs | Spearman ρ |",
              "|---|---|---|---|---|"]
    index = {(r["backbone"], r["freeze"]): r for r in rows}
    for policy in meta["order"]["freeze"]:
        chain = [index[(b, policy)] for b in published if (b, policy) in index]
        if len(chain) < 2:
            continue
        measured = " < ".join(short(r["backbone"]) for r in sorted(chain, key=lambda r: r["test_acc"]))
        if all(a["test_acc"] < b["test_acc"] for a, b in itertools.pairwise(chain)):
            order = f"{measured}: agrees"
        else:
            reversed_ = all(a["test_acc"] > b["test_acc"] for a, b in itertools.pairwise(chain))
            order = f"{measured}: disagrees ({'reversed' if reversed_ else 'other order'})"
        pairs = {f"{short(a['backbone'])}/{short(b['backbone'])}": ci_overlap(a, b)
                 for a, b in itertools.pairwise(chain)}
        overlap = ", ".join(f"{k} {v}" for k, v in pairs.items()) + (
            ": order resolved" if set(pairs.values()) == {"apart"} else ": order not resolved by this experiment")
        rho = stats.spearmanr([PUBLISHED_TOP1[r["backbone"]] for r in chain],
                              [r["test_acc"] for r in chain]).statistic if len(chain) >= 3 else None
        accs = " · ".join(f"{short(r['backbone'])} {pct(r['test_acc'])}" for r in chain)
        lines.append(f"| {policy} | {accs} | {order} | {overlap} | "
                     f"{'—' if rho is None or rho != rho else f'{rho:+.2f}'} |")
    sizes = ", ".join(f"{short(b)} {NATIVE_SIZE[b]}" for b in meta["order"]["backbone"] if b in NATIVE_SIZE)
    lines += ["", "With three backbones ρ can only be ±1 or ±0.5: a summary of the order, not a test.", "",
              f"**Caveats.** Every backbone sees {meta['data.image_size']} px inputs, below its native size "
              f"({sizes} px); each split is capped at {meta['data.max_samples']} images (train "
              f"{meta['data.n_train']}, test {meta['data.n_test']}); epochs: {meta['train.epochs']}, at one lr "
              f"({meta['train.lr']}); {len(meta['order']['seeds'])} seeds, so intervals are wide and "
              "\"inconclusive\" means this experiment cannot tell, not that there is no difference. Overlapping "
              "CIs of two means is a conservative check; the paired deltas above are the sharper test."]
    return lines


