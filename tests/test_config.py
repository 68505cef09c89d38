import pytest

from pipelines.config import RunConfig, digest, flatten, load_config
from pipelines.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_defaults_are_the_quickstart_backbone():
    cfg = load_config()
    assert cfg == RunConfig()
    assert cfg.model.backbone == "timm/tf_efficientnet_lite0" and cfg.data.dataset == "digits"


def test_yaml_then_overrides(tmp_path):
    path = write(tmp_path, "train:\n  lr: 1e-3\n  epochs: 7\nmodel:\n  freeze: last_n:2\n")
    cfg = load_config(path, {"train.epochs": "3", "seed": "5"})
    assert cfg.train.lr == 0.001  # PyYAML reads 1e-3 as a string: it must still become a float
    assert cfg.train.epochs == 3 and cfg.seed == 5 and cfg.model.freeze == "last_n:2"


def test_mlflow_float_params_become_ints():
    assert load_config(None, {"train.epochs": "4.0"}).train.epochs == 4
    with pytest.raises(ConfigError, match="train.epochs must be int"):
        load_config(None, {"train.epochs": "2.5"})


@pytest.mark.parametrize("text, message", [
    ("train:\n  lrr: 0.1\n", "unknown key 'train.lrr' .*did you mean 'train.lr'"),
    ("trian:\n  lr: 0.1\n", "unknown key 'trian'"),
    ("train:\n  lr: abc\n", "train.lr must be float, got 'abc'"),
    ("train:\n  epochs: [1, 2]\n", "train.epochs must be int"),
    ("train:\n  resume: maybe\n", "train.resume must be bool"),
    ("train: 3\n", "'train' must be a mapping"),
    ("- a\n- b\n", "expected a mapping"),
    ("train: {lr: [\n", "not valid YAML"),
])
def test_bad_files_give_one_line_errors(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(write(tmp_path, text))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("overrides, message", [
    ({"train.batch_size": 0}, "batch_size must be >= 1"),
    ({"train.epochs": 0}, "epochs must be >= 1"),
    ({"train.lr": -1}, "lr must be > 0"),
    ({"model.freeze": "half"}, "unknown freeze policy 'half'"),
    ({"model.freeze": "last_n:0"}, "unknown freeze policy"),
    ({"train.optimizer": "adam_w"}, "optimizer must be one of"),
    ({"data.val_fraction": 0.6, "data.test_fraction": 0.5}, "sum to less than 1"),
    ({"model.backbone": "resnet18"}, "'timm/<name>' or 'torchvision/<name>'"),
    ({"train.lr": "nan"}, "train.lr must be float"),
])
def test_bad_values(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


@pytest.mark.parametrize("shifts, message", [
    (["gausian_noise:0.1"], r"unknown shift 'gausian_noise:0.1' \(did you mean 'gaussian_noise:0.1'\? valid: "
                            r"gaussian_noise:<sigma in \(0, 1\]>, blur:"),
    (["noise"], r"unknown shift 'noise' \(valid: gaussian_noise:"),
    (["jpeg:20.5"], r"'jpeg:20.5' needs jpeg:<quality, a whole number in 1..100> \(valid: "),
    ("blur:0", r"'blur:0' needs blur:<sigma in pixels"),
    (["rotate:abc"], r"'rotate:abc' needs rotate:<max degrees in \(0, 180\]>"),
    (["rotate:30", "rotate:30.0"], "eval.shifts lists rotate_30 more than once"),
])
def test_bad_shifts_are_refused_in_one_line(shifts, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, {"eval.shifts": shifts})
    assert "\n" not in str(info.value)


def test_shifts_parse_to_names_mlflow_takes_and_enter_the_digest_only_when_set():
    from pipelines.shifts import parse_shifts

    cfg = load_config(None, {"eval.shifts": "gaussian_noise:0.1,jpeg:20"})  # the command line's form
    assert [(s.spec, s.name) for s in parse_shifts(cfg.eval.shifts)] == [("gaussian_noise:0.1", "gaussian_noise_0.1"),
                                                                         ("jpeg:20", "jpeg_20")]
    assert digest(load_config(None, {"eval.shifts": []})) == digest(load_config())  # earlier digests hold
    assert digest(cfg) != digest(load_config())


def test_missing_file():
    with pytest.raises(ConfigError, match="experiment file not found"):
        load_config("experiments/nope.yaml")


def test_flatten_and_digest():
    cfg = load_config()
    flat = flatten(cfg)
    assert flat["train.lr"] == 0.001 and flat["model.backbone"] == "timm/tf_efficientnet_lite0"
    # Where and how a run is logged or resumed does not change what it computes.
    same = load_config(None, {"tracking.run_name": "x", "train.resume": True, "train.checkpoint_dir": "/tmp/y"})
    assert digest(same) == digest(cfg)
    assert digest(load_config(None, {"seed": 1})) != digest(cfg)


def test_shipped_experiments_load():
    from tests.conftest import ROOT

    files = sorted((ROOT / "experiments").glob("*.yaml"))
    assert files
    from pipelines.config import load_experiment
    from pipelines.studies.search_space import parse_search

    for path in files:
        cfg, sections = load_experiment(path)
        if "search" in sections:  # the search: sections are checked as strictly as a run's keys
            parse_search(sections["search"], cfg, source=str(path))
