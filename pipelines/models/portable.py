"""A trained network as data only: its tensors in `model.safetensors`, its description in `freezeframe.json`.

A registered model is shared: whoever can register a version would run code on every machine that
unpickled it (`torch.load`, `mlflow.pytorch.load_model`). These two files hold no code: the network is
rebuilt by name (timm/torchvision, no download) and the tensors loaded strictly, so a crafted version can
at worst fail to load or predict badly. tracking/ moves the files; nothing here knows about MLflow.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torchvision.transforms import InterpolationMode

from pipelines.data.loaders import Preprocessing
from pipelines.errors import WeightsError, first_line
from pipelines.models.backbones import build_backbone
from pipelines.models.freezing import without_policy_hooks

FORMAT = "freezeframe.weights/1"
TENSORS = "model.safetensors"
DESCRIPTION = "freezeframe.json"
FILES = (TENSORS, DESCRIPTION)
_INTERPOLATIONS = {mode.value for mode in InterpolationMode}


def describe(backbone: str, weights: str, freeze: str, class_names: Sequence[str], image_size: int,
             preprocessing: Preprocessing) -> dict:
    """What rebuilds the network (backbone, number of classes) and what predict needs to preprocess an
    image as in training; `weights` (where training started) and `freeze` are lineage only."""
    return {"format": FORMAT, "backbone": backbone, "weights": weights, "num_classes": len(class_names),
            "class_names": list(class_names), "image_size": int(image_size),
            "mean": [float(v) for v in preprocessing.mean], "std": [float(v) for v in preprocessing.std],
            "interpolation": preprocessing.interpolation, "freeze": freeze}


def tensors_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict as safetensors takes it: CPU, contiguous, and one storage per tensor (it refuses
    shared storage, as tied weights have: each key gets its own copy, so a strict load finds them all)."""
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}


def export_copy(model: nn.Module) -> nn.Module:
    """A CPU copy in eval mode, without freezeframe's BatchNorm hooks: what MLflow's pickled flavour gets
    (loadable with no freezeframe code), and logging never moves the live model."""
    return without_policy_hooks(copy.deepcopy(model)).to("cpu", memory_format=torch.contiguous_format).eval()


def write(folder: Path, model: nn.Module, description: dict) -> list[Path]:
    """Both files into `folder`: the tensors (copied to the CPU as they are written) and the description."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors_of(model), str(folder / TENSORS), metadata={"format": FORMAT})
    (folder / DESCRIPTION).write_text(json.dumps(validate(description, str(folder)), indent=1))
    return [folder / name for name in FILES]


def read_description(path: Path, source: str) -> dict:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{source}: {DESCRIPTION} is not readable JSON ({first_line(exc)})") from None
    return validate(raw, source)


def validate(raw: object, source: str) -> dict:
    """Every field checked before anything is built: the file may come from anyone who can register."""
    def bad(why: str) -> WeightsError:
        return WeightsError(f"{source}: {DESCRIPTION} {why}")

    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise bad(f"is not a {FORMAT} description")
    names = raw.get("class_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise bad("has no list of class names")
    if raw.get("num_classes") != len(names):
        raise bad(f"says num_classes {raw.get('num_classes')!r} for {len(names)} class names")
    size = raw.get("image_size")
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 8192:
        raise bad(f"has image_size {size!r}, not a whole number of pixels")
    for key in ("mean", "std"):
        values = raw.get(key)
        if not (isinstance(values, list) and len(values) == 3 and all(isinstance(v, (int, float)) for v in values)):
            raise bad(f"has {key} {values!r}, not three numbers")
    if not all(v > 0 for v in raw["std"]):
        raise bad("has a std that is not positive")
    if raw.get("interpolation") not in _INTERPOLATIONS:
        raise bad(f"has interpolation {raw.get('interpolation')!r}: one of {', '.join(sorted(_INTERPOLATIONS))}")
    for key in ("backbone", "weights", "freeze"):
        if not isinstance(raw.get(key), str):
            raise bad(f"has no {key} name")
    return raw


def read_tensors(path: Path, source: str) -> dict[str, torch.Tensor]:
    """Tensors only: safetensors' format has no code in it to run (never `torch.load` on shared files)."""
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - a corrupt or crafted file fails in safetensors' own types
        raise WeightsError(f"{source}: {TENSORS} is not a readable safetensors file ({first_line(exc)})") from None


def rebuild(folder: Path, source: str) -> tuple[nn.Module, dict]:
    """(network in eval mode, description): built by name with random init, then every tensor loaded
    strictly, so the file must be exactly the network its description names."""
    description = read_description(folder / DESCRIPTION, source)
    tensors = read_tensors(folder / TENSORS, source)
    backbone = build_backbone(description["backbone"], description["num_classes"], "none")
    try:
        backbone.model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{source}: {TENSORS} does not fit {description['backbone']} with "
                           f"{description['num_classes']} classes ({first_line(exc)})") from None
    return backbone.model.eval(), description
