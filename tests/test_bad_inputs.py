"""The bad-input matrix: every entry point, each bad input refused with one line naming the problem,
no traceback from our code, no MLflow run or Optuna trial left RUNNING, nothing in the registry."""

from pathlib import Path

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from freezeframe.cli import main
from tests.conftest import free_port, runs_in, tiny_experiment


def experiment(tmp: Path, extra: str = "", **overrides) -> str:
    return str(tiny_experiment(tmp, extra, **overrides))


def grid(tmp: Path, body: str, **overrides) -> list[str]:
    return ["compare", "--experiment", experiment(tmp, "compare:\n" + body, **overrides)]


def search(tmp: Path, body: str, *flags: str) -> list[str]:
    return ["search", "--experiment", experiment(tmp, "search:\n" + body), "--storage",
            f"sqlite:///{tmp}/optuna.db", *flags]


def study_of(tmp: Path, kind: str, running_arm: bool = False) -> str:
    """An existing study named 'taken' of the given kind; with an arm of another grid running on another host."""
    storage = f"sqlite:///{tmp}/optuna.db"
    study = optuna.create_study(study_name="taken", storage=storage, direction="maximize")
    study.set_user_attr("freezeframe.kind", kind)
    if running_arm:
        trial = study.ask()
        trial.set_user_attr("config_digest", "another-grid")
        trial.set_user_attr("arm", "timm/resnet18 · frozen · seed 0")
        trial.set_user_attr("worker", {"host": "another-machine", "pid": 1})
    return storage


def train(tmp: Path, *flags: str, **overrides) -> list[str]:
    return ["train", "--experiment", experiment(tmp, **overrides), *flags]


def files(tmp: Path) -> dict[str, Path]:
    """Bad files of every kind the entry points read."""
    out = {}
    good = tmp / "good.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(good)
    out["truncated"] = tmp / "truncated.png"
    out["truncated"].write_bytes(good.read_bytes()[:60])
    out["empty"] = tmp / "empty.jpg"
    out["empty"].write_bytes(b"")
    out["text"] = tmp / "notes.png"
    out["text"].write_text("this is not an image")
    out["huge"] = tmp / "huge.png"  # a decompression bomb: 196 M pixels, a few kB on disk
    Image.new("1", (14_000, 14_000)).save(out["huge"])
    bad_folder = tmp / "only-bad" / "cls"
    bad_folder.mkdir(parents=True)
    (bad_folder / "a.png").write_bytes(out["truncated"].read_bytes())
    (bad_folder / "b.jpg").write_bytes(b"")
    out["only_bad"] = tmp / "only-bad"
    (tmp / "no-classes").mkdir()
    out["no_classes"] = tmp / "no-classes"
    out["empty_val"], out["split_classes"] = tmp / "empty-val", tmp / "split-classes"
    # pre-split folders with a good train/ (classes a, b): val/ empty, or val/ with classes a, c
    for folder, val_classes in ((out["empty_val"], ""), (out["split_classes"], "ac")):
        (folder / "val").mkdir(parents=True)
        for split, classes in (("train", "ab"), ("val", val_classes)):
            for name in classes:
                (folder / split / name).mkdir(parents=True)
                (folder / split / name / "0.png").write_bytes(good.read_bytes())
    out["zero_pth"] = tmp / "zero.pth"
    out["zero_pth"].write_bytes(b"")
    from pipelines.models.backbones import build_backbone

    out["other_pth"] = tmp / "resnet18.pth"
    torch.save(build_backbone("torchvision/resnet18", 10).model.state_dict(), out["other_pth"])
    out["weights_txt"] = tmp / "weights.txt"
    out["weights_txt"].write_text("1 2 3")
    out["broken_yaml"] = tmp / "broken.yaml"
    out["broken_yaml"].write_text("train: {lr: [\n")
    return out


S = "  batch_size: {low: 8, high: 16}\n"
CASES = {
    # train: CLI parameters and experiment files
    "unknown backbone": (lambda t, f: train(t, "--backbone", "timm/resnet19"),
                         "unknown backbone 'timm/resnet19'; closest: timm/resnet18"),
    "source prefix": (lambda t, f: train(t, "--backbone", "resnet18"), "'timm/<name>' or 'torchvision/<name>'"),
    "unknown dataset": (lambda t, f: train(t, "--dataset", "cifar11"), "unknown dataset 'cifar11'"),
    "missing folder": (lambda t, f: train(t, "--dataset", f"imagefolder:{t}/nope"), "image folder not found"),
    "folder w/o classes": (lambda t, f: train(t, "--dataset", f"imagefolder:{f['no_classes']}"),
                           "no class sub-folders"),
    "only corrupt images": (lambda t, f: train(t, "--dataset", f"imagefolder:{f['only_bad']}"),
                            "no readable images (2 unreadable)"),
    # pre-split image folders
    "pre-split, empty val/": (lambda t, f: train(t, "--dataset", f"imagefolder:{f['empty_val']}"),
                              "val/ is empty"),
    "pre-split, classes differ": (lambda t, f: train(t, "--dataset", f"imagefolder:{f['split_classes']}"),
                                  "classes differ between splits: val lacks b; val has extra c"),
    "batch size 0": (lambda t, f: train(t, "--batch_size", "0"), "train.batch_size must be >= 1"),
    "lr not a number": (lambda t, f: train(t, "--lr", "abc"), "train.lr must be float, got 'abc'"),
    "fractional epochs": (lambda t, f: train(t, "--epochs", "2.5"), "train.epochs must be int"),
    "image too small": (lambda t, f: train(t, "--image_size", "16"), "data.image_size 16 is too small"),
    "unknown policy": (lambda t, f: train(t, "--freeze", "half"), "unknown freeze policy 'half'"),
    "layer decay 0": (lambda t, f: train(t, "--freeze", "layer_decay:0"),
                      "layer decay factor must be a number in (0, 1)"),
    "layer decay 1.5": (lambda t, f: train(t, "--freeze", "layer_decay:1.5"), "'layer_decay:1.5': the layer decay"),
    "layer decay x": (lambda t, f: train(t, "--freeze", "layer_decay:x"), "'layer_decay:x': the layer decay"),
    "layer decay in a grid": (lambda t, f: grid(t, "  freeze: [frozen, layer_decay:2]\n"), "'layer_decay:2'"),
    "linear probe C 0": (lambda t, f: train(t, "--freeze", "linear_probe:0.1,0"), "takes numbers > 0"),
    "linear probe with augmentation": (lambda t, f: train(t, "--freeze", "linear_probe", "--set", "data.augment=true"),
                                       "data.augment does not apply to it"),
    "bn sometimes": (lambda t, f: train(t, "--set", "model.bn=sometimes"),
                     "model.bn must be one of ('frozen', 'train'), got 'sometimes'"),
    "missing weights file": (lambda t, f: train(t, "--weights", f"{t}/none.pth"), "weights file not found"),
    "zero-byte weights": (lambda t, f: train(t, "--weights", str(f["zero_pth"])), "cannot read weights file"),
    "weights that do not fit": (lambda t, f: train(t, "--weights", str(f["other_pth"])), "do not fit"),
    "weights, wrong extension": (lambda t, f: train(t, "--weights", str(f["weights_txt"])), "is not a source"),
    "unknown registry model": (lambda t, f: train(t, "--weights", "models:/ghost@champion"),
                               "cannot load models:/ghost@champion"),
    "malformed registry URI": (lambda t, f: train(t, "--weights", "models:/"), "is not a registry URI"),
    "unknown YAML key": (lambda t, f: ["train", "--experiment", experiment(t, "extra: 1\n")],
                         "unknown key 'extra'"),
    "misspelt YAML key": (lambda t, f: ["train", "--experiment", experiment(t, **{"train.epochz": 3})],
                          "unknown key 'train.epochz' (did you mean 'train.epochs'?)"),
    "misspelt --set key": (lambda t, f: train(t, "--set", "train.lrr=1"),
                           "unknown key 'train.lrr' (did you mean 'train.lr'?)"),
    "missing experiment": (lambda t, f: ["train", "--experiment", f"{t}/missing.yaml"],
                           "experiment file not found"),
    "broken YAML": (lambda t, f: ["train", "--experiment", str(f["broken_yaml"])], "not valid YAML"),
    "negative memory guard": (lambda t, f: train(t, "--set", "train.memory_limit_mb=-1"),
                              "train.memory_limit_mb must be >= 0"),
    # compare
    "empty grid": (lambda t, f: grid(t, "  freeze: []\n"), "the comparison grid is empty"),
    "duplicate arms": (lambda t, f: grid(t, "  freeze: [frozen, frozen]\n"), "duplicate arm"),
    "gradual past last epoch": (lambda t, f: grid(t, "  freeze: [gradual]\n", **{"model.unfreeze_at": [2, 9]}),
                                "must be increasing epochs within 2..train.epochs"),
    "empty seeds": (lambda t, f: grid(t, "  seeds: []\n"), "compare.seeds is empty"),
    "compare, unreachable storage": (lambda t, f: [*grid(t, "  freeze: [frozen]\n"), "--storage",
                                                   "postgresql://nobody@127.0.0.1:9/x"], "is unreachable"),
    "compare, storage not a URL": (lambda t, f: [*grid(t, "  freeze: [frozen]\n"), "--storage", "optuna.db"],
                                   "is not a URL"),
    "compare on a search's study": (lambda t, f: [*grid(t, "  name: taken\n"), "--storage", study_of(t, "search")],
                                    "study 'taken' in this storage is a search, not a compare"),
    "search on a comparison's study": (lambda t, f: ["search", "--experiment", experiment(t, "search:\n" + S),
                                                     "--study_name", "taken", "--storage", study_of(t, "compare")],
                                       "study 'taken' in this storage is a compare, not a search"),
    "grid changed while arms run": (lambda t, f: [*grid(t, "  name: taken\n"), "--storage",
                                                  study_of(t, "compare", running_arm=True)],
                                    "is being run with another config"),
    # compare, rank and search on an engine (the Slurm-only ones need its cluster: tests/test_slurm.py)
    "unknown cluster": (lambda t, f: [*grid(t, "  freeze: [frozen]\n"), "--cluster", "kubernetes"],
                        "cluster.engine must be one of ('local', 'ray', 'slurm'), got 'kubernetes'"),
    "workers 0": (lambda t, f: [*grid(t, "  freeze: [frozen]\n"), "--cluster", "ray", "--workers", "0"],
                  "cluster.workers must be >= 1, got 0"),
    "unreachable Ray address": (lambda t, f: [*grid(t, "  freeze: [frozen]\n"), "--cluster", "ray", "--set",
                                              f"cluster.address=127.0.0.1:{free_port()}"],
                                "no Ray cluster answers at 127.0.0.1:"),
    "Ray without an address": (lambda t, f: ["rank", "--experiment", experiment(t), "--cluster", "ray"],
                               "cluster=ray needs the cluster's address: set RAY_ADDRESS"),
    "dry run off Slurm": (lambda t, f: ["search", "--experiment", experiment(t, "search:\n" + S), "--workers", "2",
                                        "--dry-run"], "--dry-run prints the Slurm script"),
    "password in a worker's storage": (lambda t, f: [*grid(t, "  freeze: [frozen]\n"), "--workers", "2",
                                                     "--storage", "postgresql://me:hunter2@db.example/x"],
                                       "holds a password, which would be written into every worker's command line"),
    # search
    "bound not a multiple of 8": (lambda t, f: search(t, "  batch_size: {low: 12, high: 64}\n"),
                                  "is not a positive multiple of 8"),
    "low above high": (lambda t, f: search(t, "  batch_size: {low: 64, high: 8}\n"), "low 64 > high 8"),
    "no trials": (lambda t, f: search(t, S, "--n_trials", "0"), "n_trials must be > 0"),
    "unknown sampler": (lambda t, f: search(t, S, "--sampler", "cmaes"), "unknown sampler 'cmaes'"),
    "unknown pruner": (lambda t, f: search(t, S, "--pruner", "early"), "unknown pruner 'early'"),
    "unknown objective": (lambda t, f: search(t, S + "  objectives: [val/acc, perf/speed]\n"),
                          "search objective 'perf/speed' is not a metric a trial reports"),
    "pruner with two objectives": (lambda t, f: search(t, S + "  objectives: [val/acc, perf/images_per_s]\n",
                                                       "--pruner", "median"),
                                   "search.pruner 'median' needs one objective"),
    "max_trials below 1": (lambda t, f: search(t, S, "--max_trials", "0"), "search.max_trials must be >= 1"),
    "linear probe in a search": (lambda t, f: search(t, S + "  freeze: [frozen, linear_probe]\n"),
                                 "search: linear_probe is fitted to convergence"),
    "smallest batch does not fit": (lambda t, f: search(t, S, "--set", "train.memory_limit_mb=50"),
                                    "search.batch_size.low 8 does not fit"),
    "unreachable storage": (lambda t, f: ["search", "--experiment", experiment(t, "search:\n" + S), "--storage",
                                          "postgresql://nobody@127.0.0.1:9/x"], "is unreachable"),
    "storage not a URL": (lambda t, f: ["search", "--experiment", experiment(t, "search:\n" + S), "--storage",
                                        "optuna.db"], "is not a URL"),
    # predict: registry URIs and image files
    "model not a URI": (lambda t, f: ["predict", "--model", "model.pth", "--input", str(t / "good.png")],
                        "is not a model URI"),
    "unknown model": (lambda t, f: ["predict", "--model", "models:/ghost@champion", "--input", str(t / "good.png")],
                      "cannot load model models:/ghost@champion"),
    "truncated image": (lambda t, f: ["predict", "--input", str(f["truncated"])], "cannot read image"),
    "zero-byte image": (lambda t, f: ["predict", "--input", str(f["empty"])], "cannot read image"),
    "text named .png": (lambda t, f: ["predict", "--input", str(f["text"])], "cannot read image"),
    "decompression bomb": (lambda t, f: ["predict", "--input", str(f["huge"])], "cannot read image"),
    "missing input": (lambda t, f: ["predict", "--input", str(t / "nothing.png")], "input not found"),
    # any entry point
    "unknown flag": (lambda t, f: ["train", "--lrr", "0.1"], "unrecognized arguments: --lrr"),
    "unknown command": (lambda t, f: ["fit"], "invalid choice: 'fit'"),
}


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad-files")
    return folder, files(folder)


def test_the_matrix_is_large_enough():
    assert len(CASES) >= 25


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, tracking_store, tmp_path, bad_files, capsys, monkeypatch):
    folder, made = bad_files
    argv_for, message = CASES[case]
    (tmp_path / "good.png").write_bytes((folder / "good.png").read_bytes())
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code = main(argv_for(tmp_path, made))
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1] if err else ""
    assert code == 2, err
    assert last.startswith("freezeframe: error: ") and message in last, err
    assert "Traceback" not in err and "hunter2" not in err
    assert [r.info.run_name for r in runs_in(tracking_store) if r.info.status == "RUNNING"] == []
    assert MlflowClient().search_registered_models() == []
    optuna_db = tmp_path / "optuna.db"
    if optuna_db.exists():
        for summary in optuna.get_all_study_summaries(f"sqlite:///{optuna_db}"):
            study = optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{optuna_db}")
            running = [t for t in study.trials if t.state.name == "RUNNING"]
            assert running == [] or case == "grid changed while arms run" and len(running) == 1  # the other grid's
