"""The command line, in-process: MLproject agrees with the parser, and bad input gets one line and no run."""

import shlex

import pytest
import yaml

import freezeframe
from freezeframe import cli
from freezeframe.cli import RUN_FLAGS, build_parser, main
from tests.conftest import ROOT, runs_in, tiny_overrides

MLPROJECT = yaml.safe_load((ROOT / "MLproject").read_text())


@pytest.mark.parametrize("entry", sorted(MLPROJECT["entry_points"]))
def test_mlproject_entry_matches_the_parser(entry):
    spec = MLPROJECT["entry_points"][entry]
    params = spec["parameters"]
    for name, param in params.items():
        assert param["type"] in ("string", "float", "path", "uri"), name
        assert "default" in param, f"{entry}.{name} has no default"
        assert f"--{name} {{{name}}}" in spec["command"], f"{entry}.{name} is not passed to the command"
    # Every placeholder is a declared parameter, and the command parses with MLflow's defaults filled in.
    command = spec["command"].format(**{k: shlex.quote(str(v["default"])) for k, v in params.items()})
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "freezeframe"]
    args = build_parser().parse_args(argv[3:])
    for name in params:
        assert hasattr(args, name), f"parser has no --{name}"


def test_train_entry_exposes_every_run_flag():
    assert set(RUN_FLAGS) <= set(MLPROJECT["entry_points"]["train"]["parameters"])


def test_main_runs_the_quickstart_comparison():
    assert "freezeframe compare" in MLPROJECT["entry_points"]["main"]["command"]
    assert MLPROJECT["entry_points"]["main"]["parameters"]["experiment"]["default"] == "experiments/quickstart.yaml"


def test_version_is_pyprojects(capsys):
    import tomllib

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert freezeframe.__version__ == version
    assert capsys.readouterr().out == f"freezeframe {version}\n"


def test_shipped_experiments_are_found_from_any_folder(tmp_path, monkeypatch):
    """The checkout's experiments/, or the installed package's freezeframe/experiments/; the working folder first."""
    monkeypatch.chdir(tmp_path)
    assert cli.resolve_experiment(cli.DEFAULT_EXPERIMENT) == ROOT / "experiments" / "quickstart.yaml"
    installed = tmp_path / "site-packages" / "freezeframe"
    (installed / "experiments").mkdir(parents=True)
    (installed / "experiments" / "quickstart.yaml").write_text("seed: 1\n")
    monkeypatch.setattr(cli, "PACKAGE_DIR", installed)
    monkeypatch.setattr(cli, "PROJECT_ROOT", installed.parent)  # a wheel's site-packages: no experiments/
    assert cli.resolve_experiment(cli.DEFAULT_EXPERIMENT) == installed / "experiments" / "quickstart.yaml"
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "quickstart.yaml").write_text("seed: 2\n")
    assert cli.resolve_experiment(cli.DEFAULT_EXPERIMENT) == cli.Path("experiments/quickstart.yaml")
    assert cli.resolve_experiment("missing.yaml") == cli.Path("missing.yaml")  # the loader names it


def cli_args(tmp_path, *given):
    """The tiny settings as --set flags, except for keys the test gives through their own flag."""
    taken = {RUN_FLAGS[a[2:]] for a in given if a.startswith("--") and a[2:] in RUN_FLAGS}
    flags = []
    for key, value in tiny_overrides(tmp_path).items():
        if key not in taken:
            flags += ["--set", f"{key}={value}"]
    return [*flags, *given]


def test_unreachable_tracking_uri(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.chdir(tmp_path)
    import mlflow

    mlflow.set_tracking_uri("http://127.0.0.1:9")
    assert main(["train", *cli_args(tmp_path)]) == 2
    assert "tracking server http://127.0.0.1:9 is unreachable" in capsys.readouterr().err


def test_corrupt_images_are_skipped_and_counted(tracking_store, tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (24, 24), color=(i * 30, 0, 0) if name == "a" else (0, 0, i * 30)).save(
                root / name / f"{i}.png")
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert main(["train", *cli_args(tmp_path, "--dataset", f"imagefolder:{root}", "--epochs", "1",
                 "--set", "data.val_fraction=0.25", "--set", "data.test_fraction=0.25")]) == 0
    (run,) = runs_in(tracking_store)
    assert run.info.status == "FINISHED" and run.data.metrics["data/skipped_files"] == 1


