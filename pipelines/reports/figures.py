"""Figures of a run, as matplotlib Figures (the tracker decides where they go).

Built with the Figure API, not pyplot: no global figure registry, so the tracker's background
thread can render them while training goes on, and nothing needs closing.

A study's summary draws its figures here too, so the per-run figures' own libraries (torchvision, and
sklearn's metrics) load in the functions that need them: a rerun with nothing to train loads neither."""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # headless: runs are scripts, not notebooks

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

if TYPE_CHECKING:
    import torch


def confusion_figure(matrix: torch.Tensor, class_names: list[str], title: str) -> Figure:
    from sklearn.metrics import ConfusionMatrixDisplay  # see the module's docstring

    size = max(5.0, 0.45 * len(class_names) + 2)
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    display = ConfusionMatrixDisplay(np.asarray(matrix), display_labels=class_names)
    display.plot(ax=ax, cmap="Blues", colorbar=False, xticks_rotation=45 if len(class_names) > 6 else 0)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def curves_figure(history: list[dict[str, float]], title: str) -> Figure:
    """Loss, accuracy and macro-F1 per epoch, train against val."""
    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(13, 3.8))
    axes = fig.subplots(1, 3)
    for ax, metric in zip(axes, ("loss", "acc", "f1_macro"), strict=True):
        for split, style in (("train", "--"), ("val", "-")):
            ax.plot(epochs, [row[f"{split}/{metric}"] for row in history], style, marker="o", label=split)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def samples_figure(images: torch.Tensor, labels: list[int], class_names: list[str], title: str) -> Figure:
    """The inputs as the model sees them (resized, denormalised), with their labels."""
    from torchvision.utils import make_grid  # see the module's docstring

    grid = make_grid(images[:32], nrow=8, padding=2, pad_value=1.0).permute(1, 2, 0).numpy()
    fig = Figure(figsize=(10, 10 * grid.shape[0] / grid.shape[1] + 0.8))
    ax = fig.subplots()
    ax.imshow(grid)
    ax.axis("off")
    names = [class_names[i] for i in labels[:32]]
    rows = [" ".join(f"{n[:10]:>10}" for n in names[i:i + 8]) for i in range(0, len(names), 8)]
    ax.set_title(title + "\n" + "\n".join(rows), fontsize=7, family="monospace")
    fig.tight_layout()
    return fig


def arm_curves_figure(curves: dict[str, tuple[list[int], list[float]]], metric: str, title: str) -> Figure:
    """One line per arm: how each backbone × policy × seed learned."""
    fig = Figure(figsize=(9, 5))
    ax = fig.subplots()
    for label, (steps, values) in curves.items():
        ax.plot(steps, values, marker="o", markersize=3, label=label)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def pareto_figure(points: list[dict], title: str) -> Figure:
    """Test accuracy against training time, one point per backbone × policy (mean ± std over seeds)."""
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    for p in points:
        ax.errorbar(p["train_s"], p["test_acc"], yerr=p["test_acc_std"], fmt="o", capsize=3)
        ax.annotate(p["label"], (p["train_s"], p["test_acc"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("training time per run (s)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def delta_figure(paired: list[dict], title: str) -> Figure:
    """One bar per backbone × policy: its paired test-acc difference against frozen (above zero: that
    policy paid off), with its 95% CI as error bar: over the test images (nested in the seeds), or over
    two or more shared seeds for arms that logged no per-image outcomes."""
    fig = Figure(figsize=(max(5, 1.1 * len(paired) + 2), 4))
    ax = fig.subplots()
    labels = [f"{p['backbone']}\n{p['freeze']}" for p in paired]
    means = [p["delta"].mean for p in paired]
    ax.bar(labels, means, color=["tab:green" if v >= 0 else "tab:red" for v in means])
    for x, p in enumerate(paired):
        d = p["delta"]
        lo, hi = d.interval  # over test images (and seeds) where the arms logged them, else over seeds
        if lo is not None:  # one shared seed and no per-image outcomes: no interval, and no bar pretending to be one
            yerr = [[max(d.mean - lo, 0.0)], [max(hi - d.mean, 0.0)]]  # a percentile CI may sit beside the mean
            ax.errorbar(x, d.mean, yerr=yerr, fmt="none", ecolor="black", capsize=4)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("test acc: policy − frozen (paired, 95% CI)")
    ax.set_title(title)
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.tight_layout()
    return fig


def params_figure(points: list[dict], title: str) -> Figure:
    """Test accuracy against trainable parameters (log scale), one point per backbone × policy: colour
    names the backbone, marker the policy; error bars are the 95% CI over seeds where two or more define it.
    Points are nudged apart sideways (equal counts would hide each other: same-width heads, or unfrozen and
    layer_decay of one backbone), and the y axis stays within [0, 1] where a few-seed interval runs past it."""
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    colours = {b: f"C{i}" for i, b in enumerate(dict.fromkeys(p["backbone"] for p in points))}
    policies = list(dict.fromkeys(p["freeze"] for p in points))
    markers = {f: "osD^vP*X"[i % 8] for i, f in enumerate(policies)}
    for p in points:
        lo, hi = p.get("test_acc_ci_lo"), p.get("test_acc_ci_hi")
        yerr = None if lo is None else [[p["test_acc"] - lo], [hi - p["test_acc"]]]
        slot = list(colours).index(p["backbone"]) * len(policies) + policies.index(p["freeze"])
        nudge = 1.03 ** (slot - (len(colours) * len(policies) - 1) / 2)
        ax.errorbar(p["params_trainable"] * nudge, p["test_acc"], yerr=yerr, fmt=markers[p["freeze"]], capsize=3,
                    color=colours[p["backbone"]], markersize=7, alpha=0.85)
    low, high = ax.get_ylim()
    ax.set_ylim(max(low, 0.0), min(high, 1.0))
    handles = [Line2D([], [], color=c, marker="o", linestyle="", label=b) for b, c in colours.items()]
    handles += [Line2D([], [], color="grey", marker=m, linestyle="", label=f) for f, m in markers.items()]
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("test accuracy (mean, 95% CI)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def probe_figure(grid: tuple[tuple[float, float, int], ...], chosen: float, title: str) -> Figure:
    """linear_probe: validation accuracy against C (log scale), the chosen C marked."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot([c for c, _, _ in grid], [acc for _, acc, _ in grid], marker="o")
    ax.axvline(chosen, color="tab:green", linestyle="--", label=f"chosen C = {chosen:g}")
    ax.set_xscale("log")
    ax.set_xlabel("C (inverse L2 strength)")
    ax.set_ylabel("val accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    return fig


def ranking_figure(rows: list[dict], labels: dict[str, str], title: str) -> Figure:
    """One panel per score, a horizontal bar per backbone in the ranking's order (best on top): whether
    the scores agree shows as the same shape in every panel."""
    placed = [r for r in rows if all(r.get(s) is not None for s in labels)]
    fig = Figure(figsize=(4 * len(labels), 0.45 * len(placed) + 1.8))
    for ax, (score, label) in zip(fig.subplots(1, len(labels), sharey=True), labels.items(), strict=True):
        ax.barh(range(len(placed)), [r[score] for r in placed], color="tab:blue")
        ax.set_yticks(range(len(placed)), [f"{r['backbone'].rsplit('/', 1)[-1]}@{r['weights']}" for r in placed])
        ax.invert_yaxis()  # the first row (the best) on top
        ax.set_xlabel(label)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def id_vs_ood_figure(points: list[dict], title: str) -> Figure:
    """One point per backbone × policy: its clean test accuracy against its mean accuracy under the shifts
    (eval.shifts); a colour per policy, a marker per backbone (labels on points overlap once groups cluster).
    Each axis spans its own values; the dashed line is no loss under shift."""
    fig = Figure(figsize=(8, 5.5))
    ax = fig.subplots()
    policies = list(dict.fromkeys(p["freeze"] for p in points))
    backbones = list(dict.fromkeys(p["backbone"] for p in points))
    colours, markers = fig_colours(len(policies)), "osD^v<>Px*"
    for p in points:
        ax.scatter(p["id_acc"], p["ood_acc"], s=45, color=colours[policies.index(p["freeze"])],
                   marker=markers[backbones.index(p["backbone"]) % len(markers)], edgecolors="black", linewidths=0.4)
    xs, ys = [p["id_acc"] for p in points], [p["ood_acc"] for p in points]
    ax.set_xlim(min(xs) - 0.01, max(xs) + 0.01)
    ax.set_ylim(min(ys) - 0.02, max(ys) + 0.02)
    low, high = min(xs + ys), max(xs + ys)
    ax.plot([low, high], [low, high], "--", color="grey", linewidth=0.8)
    handles = [Line2D([], [], color=c, marker="o", linestyle="", label=name)
               for name, c in zip(policies, colours, strict=True)]
    handles += [Line2D([], [], color="black", markerfacecolor="white", marker=markers[i % len(markers)], linestyle="",
                       label=b)
                for i, b in enumerate(backbones)]
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_xlabel("clean test accuracy (mean over seeds)")
    ax.set_ylabel("test accuracy under shift (mean over shifts and seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def fig_colours(count: int) -> list:
    """`count` distinct colours: matplotlib's tab10, then tab20 past ten."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(count)]
