"""`train.devices: N`: one run on N processes, data-parallel (gloo on these CPU machines, 2 processes).

The two-process runs use timm's test_convnext (LayerNorm, no BatchNorm): each image is normalised on its
own, so two processes of 8 images compute exactly what one process of 16 does, and the comparison with a
one-process run can be tight. (BatchNorm in training mode normalises each process's own batch, as plain
DDP does; pipelines/training/distributed.py says so.)
"""

import json
import os
import time
from argparse import Namespace
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from freezeframe.cli import main
from pipelines.data.shards import ShardSampler, eval_shard, real_in_batch
from pipelines.errors import ConfigError
from pipelines.studies.keys import ARM_ATTR, REASON_ATTR, RUN_ATTR
from pipelines.training import distributed
from tests.conftest import runs_in, store_in, tiny_experiment
from tests.preloaded import start_worker
from tests.test_e2e import mlflow_run
from tracking import tags

pytestmark = pytest.mark.slow
# 49 = 3 x 16 + 1: the last step holds one image, on rank 0; rank 1 steps on a repeat that weighs nothing
CONVNEXT = {"backbone": "timm/test_convnext", "epochs": "2", "lr": "0.01", "max_samples": "49"}


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


@pytest.mark.e2e
def test_two_processes_through_mlflow_run_are_one_run_that_matches_one_process(tmp_path, monkeypatch):
    done = mlflow_run(tmp_path, "train", devices="2", log_model="true", **CONVNEXT)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = runs_in(store_in(tmp_path))  # rank 0 logged into the launcher's run; rank 1 logged nothing
    assert run.info.status == "FINISHED" and run.data.params["train.devices"] == "2"
    assert run.data.tags["mlflow.project.entryPoint"] == "train" and run.data.tags["entry_point"] == "train"
    # the train entry point through `mlflow run`: its own params, ours, the artifacts, the model, a checkpoint
    assert run.data.params["epochs"] == "2" and run.data.params["train.epochs"] == "2"
    assert {"config.yaml", "plots", "reports"} <= {a.path for a in MlflowClient().list_artifacts(run.info.run_id)}
    import mlflow

    assert mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list",
                                       filter_string=f"source_run_id = '{run.info.run_id}'")
    assert list((tmp_path / "checkpoints").glob("*/last.pt"))

    # the same run in one process, in-process, into the same store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_in(tmp_path))
    monkeypatch.chdir(tmp_path)
    flags = [f"--{k}={v}" for k, v in {**CONVNEXT, "weights": "none", "image_size": "32", "devices": "1",
                                         "log_model": "false"}.items()]
    assert main(["train", "--experiment", str(tmp_path / "tiny.yaml"), *flags]) == 0
    (single,) = [r for r in runs_in(store_in(tmp_path)) if r.info.run_id != run.info.run_id]
    client = MlflowClient()
    for key in ("val/acc", "val/loss", "train/loss", "train/acc"):
        two, one = history(client, run.info.run_id, key), history(client, single.info.run_id, key)
        assert [step for step, _ in two] == [1, 2], key  # one value per epoch: no rank logged twice
        assert np.allclose([v for _, v in two], [v for _, v in one], atol=1e-4), (key, two, one)
    assert run.data.metrics["test/acc"] == pytest.approx(single.data.metrics["test/acc"], abs=1e-6)
    # the confusion matrices count each image once (torchmetrics' own sync would add every rank's copy)
    confusion = []
    for found in (run, single):
        (tmp_path / found.info.run_id).mkdir()
        path = client.download_artifacts(found.info.run_id, "reports/history.json", str(tmp_path / found.info.run_id))
        confusion.append(json.loads(Path(path).read_text())["confusion"])
    assert confusion[0] == confusion[1]

    from pipelines.inference.classify import predict
    from tracking.models.model_store import load_for_inference

    image = tmp_path / "digit.png"
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint8)).save(image)
    model, description = load_for_inference(f"runs:/{run.info.run_id}/model")
    (prediction,) = predict(model, description, image, top_k=3)
    assert len(prediction.top) == 3


def start_and_kill(args: list[str], tmp_path, env: dict, rank: str, after: str) -> str:
    """Start a 2-process run (`python -m freezeframe ARGS`, forked with its libraries imported: the ranks
    it starts are fresh interpreters), kill -9 one rank once rank 0 printed the line starting with `after`;
    returns the launcher's output, once every process is gone."""
    worker = start_worker(args, tmp_path, env)
    for line in worker.stdout:
        if line.startswith(after):
            break
    ranks = [p for p in psutil.Process(worker.pid).children(recursive=True) if "RANK" in p.environ()]
    (victim,) = [p for p in ranks if p.environ()["RANK"] == rank]
    victim.kill()
    killed_at = time.monotonic()
    output = worker.stdout.read()
    assert worker.wait(timeout=60) != 0
    assert time.monotonic() - killed_at < 30, output  # elastic's monitor takes the other rank down, no hang
    assert f"rank {rank}: exit -9 (SIGKILL)" in output
    assert len(ranks) == 2 and not [p for p in ranks if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    return output


def test_kill_9_of_either_rank_ends_the_run_killed_and_the_rerun_resumes(tmp_path):
    experiment = tiny_experiment(tmp_path, **{"model.backbone": "timm/test_convnext", "train.epochs": 5,
                                              "data.max_samples": 120, "train.devices": 2})
    store = store_in(tmp_path)
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    env.pop("PYTHONUNBUFFERED", None)  # as on CI: each epoch's line must still come as the epoch ends
    cmd = ["train", "--experiment", str(experiment)]
    client = MlflowClient(store)

    # rank 0 dies: it cannot end its run, so the launcher does (the run `mlflow run` made, as here)
    launcher = client.create_run(client.create_experiment("launched")).info.run_id
    output = start_and_kill(cmd, tmp_path, {**env, "MLFLOW_RUN_ID": launcher}, rank="0", after="epoch 1/5")
    run = client.get_run(launcher)
    assert run.info.status == "KILLED" and "rank 0: exit -9 (SIGKILL)" in run.data.tags["error"], output

    # the rerun resumes from rank 0's last checkpoint; then rank 1 dies: rank 0's next collective fails,
    # and it ends its own run KILLED (a resumed run's complete curves: tests/test_faults.py, one process)
    env.pop("MLFLOW_RUN_ID", None)
    output = start_and_kill([*cmd, "--resume", "true"], tmp_path, env, rank="1", after="epoch 2/5")
    assert "epoch 1/5" not in output, output[-3000:]
    (second,) = [r for r in runs_in(store) if r.info.run_id != launcher]
    assert second.info.status == "KILLED", output
    assert second.data.tags["error"].startswith("another process of this 2-process run died")


def test_kill_9_of_an_arms_rank_0_queues_the_arm_again_and_the_worker_resumes_it(tmp_path):
    """The worker outlives its arm's processes: the arm's run ends KILLED (rank 0 died before it could end
    it), its trial fails and is queued again as a dead worker's would be, and the same worker goes on
    from rank 0's last checkpoint."""
    experiment = tiny_experiment(tmp_path, "compare:\n  name: dp-kill\n  freeze: [unfrozen]\n",
                                 **{"model.backbone": "timm/test_convnext", "train.epochs": 4,
                                    "data.max_samples": 120, "train.devices": 2})
    store = store_in(tmp_path)
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    env.pop("PYTHONUNBUFFERED", None)
    worker = start_worker(["compare", "--experiment", str(experiment)], tmp_path, env)
    output = []
    for line in worker.stdout:
        output.append(line)
        if line.startswith("epoch 2/4"):
            break
    (rank_0,) = [p for p in psutil.Process(worker.pid).children(recursive=True) if p.environ().get("RANK") == "0"]
    rank_0.kill()
    output.append(worker.stdout.read())
    output = "".join(output)
    assert worker.wait(timeout=120) == 0, output
    assert output.count("epoch 1/4") == 1 and "epoch 4/4" in output  # the retry went on from epoch 2's checkpoint

    lost, retried = trials_and_runs("sqlite:///" + str(tmp_path / "optuna.db"), "dp-kill", store)
    assert lost[0].state.name == "FAIL" and "rank 0: exit -9 (SIGKILL)" in lost[0].user_attrs[REASON_ATTR]
    assert lost[1].info.status == "KILLED" and "rank 0: exit -9 (SIGKILL)" in lost[1].data.tags["error"]
    assert retried[0].state.name == "COMPLETE" and retried[1].info.status == "FINISHED"
    assert [step for step, _ in history(MlflowClient(store), retried[1].info.run_id, "val/acc")] == [1, 2, 3, 4]
    (parent,) = [r for r in runs_in(store) if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FINISHED"


@pytest.mark.parametrize("flags, message", [
    (["--devices", "0"], "train.devices must be >= 1, got 0"),
    (["--devices", "3", "--batch_size", "16"], "train.batch_size 16 is the global batch: it must divide by "
                                                "train.devices (3)"),
    (["--devices", "2", "--freeze", "linear_probe"], "linear_probe fits its head in one process"),
])
def test_bad_device_counts_fail_in_one_line_before_any_process_starts(flags, message, tracking_store, tmp_path,
                                                                        capsys):
    experiment = tiny_experiment(tmp_path, **{"data.augment": False})
    assert main(["train", "--experiment", str(experiment), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("freezeframe: error:") and message in err and len(err.splitlines()) == 1
    assert not runs_in(tracking_store)


def test_where_devices_do_not_apply_says_so_in_one_line(tracking_store, tmp_path, capsys, monkeypatch):
    experiment = tiny_experiment(tmp_path, "search:\n  batch_size: {low: 48, high: 96}\n",
                                 **{"train.devices": 3, "train.batch_size": 48})
    assert main(["search", "--experiment", str(experiment)]) == 2
    assert "train.devices 3 does not divide every batch size the search draws" in capsys.readouterr().err
    assert main(["rank", "--experiment", str(experiment)]) == 2
    assert "rank fits linear probes on cached features, in one process" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun -m freezeframe compare: a worker is one process
    assert main(["compare", "--experiment", str(experiment)]) == 2
    assert "compare under torchrun" in capsys.readouterr().err
    assert not runs_in(tracking_store)
    if torch.cuda.device_count() < 2:
        with pytest.raises(ConfigError, match=r"train.devices is 2 but this machine has \d CUDA device"):
            distributed.check_devices(2, torch.device("cuda"))


def trials_and_runs(storage: str, study_name: str, store: str) -> list[tuple]:
    """Each trial with its child run, by the run id the trial recorded."""
    import optuna

    runs = {r.info.run_id: r for r in runs_in(store)}
    trials = optuna.load_study(study_name=study_name, storage=storage).get_trials()
    return [(t, runs[t.user_attrs[RUN_ATTR]]) for t in trials]


def test_compare_trains_each_arm_on_two_processes_and_prunes_them_there(tracking_store, tmp_path):
    """The worker stays one process and starts each arm's two; rank 0 reports each epoch to the worker's
    trial and is pruned by the study's pruner; the worker tells the trial what rank 0 wrote back. A search's
    trial takes the same path (child_run.run_child): not run again here, for the suite's 8 minutes."""
    experiment = tiny_experiment(
        tmp_path, "compare:\n  name: dp\n  freeze: [frozen, linear_probe, unfrozen]\n  racing: successive_halving\n",
        **{"model.backbone": "timm/test_convnext", "train.epochs": 3, "data.max_samples": 100, "train.devices": 2})
    assert main(["compare", "--experiment", str(experiment)]) == 0
    found = {t.user_attrs[ARM_ATTR].split(" · ")[1]: (t, run) for t, run in trials_and_runs("sqlite:///optuna.db", "dp",
                                                                                        tracking_store)}
    assert {arm: t.state.name for arm, (t, _) in found.items()} == {
        "frozen": "COMPLETE", "linear_probe": "COMPLETE", "unfrozen": "PRUNED"}  # behind at the first rung
    for arm, (trial, run) in found.items():
        # a linear probe is one L-BFGS fit: one process, whatever the comparison's devices
        assert run.data.params["train.devices"] == ("1" if arm == "linear_probe" else "2")
        if trial.state.name == "COMPLETE":
            assert run.info.status == "FINISHED" and trial.value == run.data.metrics["best/val/acc"]
        else:
            assert run.info.status == "KILLED" and run.data.tags[tags.OPTUNA_STATE] == "PRUNED"
            assert run.data.tags["error"].startswith("pruned at epoch 1")
            assert trial.intermediate_values == {1: run.data.metrics["val/acc"]}  # rank 0 reported it
    assert len(runs_in(tracking_store)) == 4  # the parent and one run per arm: rank 1 logged nothing


def test_the_shards_deal_one_permutation_and_pad_with_repeats_that_weigh_nothing(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    one_process = list(torch.utils.data.RandomSampler(range(11), generator=generator))
    dealt, loader = [], Namespace(batch_size=2, sampler=None)
    monkeypatch.setattr(distributed, "active", lambda: True)
    for rank in (0, 1, 2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        loader.sampler = ShardSampler(11, torch.Generator().manual_seed(0))
        indices = list(loader.sampler)
        assert len(indices) == len(loader.sampler) == 4  # the same number of steps on every rank
        dealt.append(indices[:loader.sampler.real()])
        # batches of 2 (global 6): step 1 holds global images 6-10, two on ranks 0 and 1, one and a repeat on 2
        real = [real_in_batch(loader, step, 2) for step in (0, 1)]
        assert real == ([2, 2] if rank < 2 else [2, 1])
        assert distributed.loss_weight(loader, 1, real[1]) == pytest.approx(real[1] * 3 / 5)  # DDP then divides by 3
    assert sorted(sum(dealt, [])) == list(range(11))  # every image once, none twice
    assert [dealt[i % 3][i // 3] for i in range(11)] == one_process  # global batches as one process's
    shards = []
    for rank in (0, 1, 2):
        monkeypatch.setenv("RANK", str(rank))
        shards.append(list(eval_shard(list(range(11)))))
    assert sum(shards, []) == list(range(11))  # contiguous: gathered in rank order, the split's order
