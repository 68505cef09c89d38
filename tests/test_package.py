"""The package as a user gets it: the wheel built from a fresh clone's files, installed into a new venv with
the lock as constraints, and its `freezeframe` command run outside the checkout.

Installing the lock's ~130 distributions for real (torch with its CUDA libraries: 6.3 GB, ~47,000 files)
takes about 3 minutes on 2 cores, every time, since pip keeps downloaded wheels but unpacks them anew.
So by default the new venv gets its dependencies the way uv installs from its cache: each file of each
distribution the lock pins is hard-linked from `.venv`'s site-packages, where pip installed exactly those
versions (seconds; only the lock's distributions, never `.venv`'s editable freezeframe or its console
scripts). Then pip itself installs the wheel with `-c constraints.txt --no-index`: its resolver must find
every requirement of the wheel's metadata satisfied by the lock's versions, or fail, and `pip check` must
pass. `FREEZEFRAME_PACKAGE_INSTALL=index` installs the dependencies for real instead, from the configured
index and pip's cache (minutes, 6 GB of disk).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import sysconfig
import time
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, runs_in, store_in
from tests.test_project_files import pins, requirement_lines
from tests.test_readme import project_copy

PACKAGES = ("freezeframe", "pipelines", "tracking")
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def build_wheel(project: Path, into: Path) -> Path:
    """`pip wheel` offline: setuptools comes from the running venv (--no-build-isolation), no dependency is fetched."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(into), str(project)], check=True, capture_output=True, text=True,
                   env=pip_env())
    (wheel,) = into.glob("freezeframe-*.whl")
    return wheel


def pip_env(**extra) -> dict[str, str]:
    """The environment without the test's own venv: no PYTHONPATH, no VIRTUAL_ENV, .venv/bin off PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if Path(p).resolve() != Path(sys.executable).parent.resolve())
    return {**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **extra}


def link_locked_distributions(site: Path) -> int:
    """Hard-link (copy across file systems) every installed file of the lock's distributions into `site`."""
    import shutil

    locked = {canonical(name) for name in pins((ROOT / "constraints.txt").read_text().splitlines())}
    source = os.path.realpath(sysconfig.get_paths()["purelib"])
    made, linked = set(), 0
    for dist in importlib.metadata.distributions(path=[source]):
        if canonical(dist.metadata["Name"]) not in locked:
            continue
        for file in dist.files or ():
            relative = os.path.normpath(str(file))
            if relative.startswith(".."):  # console scripts, in .venv/bin, run .venv's python: not taken
                continue
            taken = [relative]
            if relative.endswith(".py"):  # its bytecode too: uv compiles it after the install, outside RECORD
                pyc = f"{os.path.basename(relative)[:-3]}.{sys.implementation.cache_tag}.pyc"
                taken.append(os.path.join(os.path.dirname(relative), "__pycache__", pyc))
            for name in taken:
                path, target = os.path.join(source, name), os.path.join(site, name)
                folder = os.path.dirname(target)
                if folder not in made:
                    os.makedirs(folder, exist_ok=True)
                    made.add(folder)
                try:
                    os.link(path, target)
                except FileNotFoundError:  # a RECORD entry gone, a module never compiled: nothing to take
                    continue
                except FileExistsError:
                    continue
                except OSError:
                    shutil.copy2(path, target)
                linked += 1
    return linked


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def new_venv(folder: Path, mode: str) -> tuple[Path, list[str]]:
    """A venv of the base interpreter (no system site-packages) and the pip command that installs into it."""
    base = getattr(sys, "_base_executable", sys.executable)
    if mode == "index":
        subprocess.run([base, "-m", "venv", str(folder)], check=True, env=pip_env())
        return folder / "bin" / "python", [str(folder / "bin" / "python"), "-m", "pip"]
    subprocess.run([base, "-m", "venv", "--without-pip", str(folder)], check=True, env=pip_env())
    python = folder / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    assert link_locked_distributions(site) > 1000
    # the running venv's pip, installing into the new one (pip is not in the lock)
    return python, [sys.executable, "-m", "pip", "--python", str(python)]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """The project as a fresh clone holds it (the files git would commit), and the wheel built from it."""
    folder = tmp_path_factory.mktemp("package")
    project = project_copy(folder)
    return project, build_wheel(project, folder / "dist")


def test_the_wheel_holds_the_code_the_experiments_the_licence_and_the_requirements(built):
    project, wheel = built
    assert wheel.name == f"freezeframe-{VERSION}-py3-none-any.whl"
    names = set(zipfile.ZipFile(wheel).namelist())
    info = f"freezeframe-{VERSION}.dist-info"
    modules = {p.relative_to(project).as_posix() for package in PACKAGES for p in (project / package).rglob("*.py")}
    experiments = {f"freezeframe/{p.relative_to(project).as_posix()}" for p in (project / "experiments").glob("*.yaml")}
    metadata_files = {f"{info}/{n}" for n in ("METADATA", "WHEEL", "RECORD", "entry_points.txt", "top_level.txt",
                                              "licenses/LICENSE")}
    assert names == modules | experiments | metadata_files  # nothing missing, no tests/, benchmarks/, docs/
    archive = zipfile.ZipFile(wheel)
    assert archive.read(f"{info}/licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()
    assert "freezeframe = freezeframe.cli:main" in archive.read(f"{info}/entry_points.txt").decode()
    metadata = archive.read(f"{info}/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata
    requires = re.findall(r"^Requires-Dist: (.+)$", metadata, re.M)
    runtime = {r for r in requires if "extra ==" not in r}
    dev = {r.split(";")[0].strip() for r in requires if 'extra == "dev"' in r}
    ray = {r.split(";")[0].strip() for r in requires if 'extra == "ray"' in r}
    assert ray == {f"{k}=={v}" for k, v in pins(requirement_lines("requirements-ray.txt")).items()}
    assert "Provides-Extra: slurm" in metadata  # no package: Slurm's client commands come with the cluster
    assert runtime == {f"{k}=={v}" for k, v in pins(requirement_lines("requirements.txt")).items()}
    assert dev == {f"{k}=={v}" for k, v in pins(requirement_lines("requirements-dev.txt")).items()}
    print(f"{wheel.name}: {wheel.stat().st_size / 1024:.0f} KiB, {len(names)} files")
    assert wheel.stat().st_size < 1024 * 1024


@pytest.mark.slow
def test_pip_install_gives_a_working_freezeframe_command_outside_the_checkout(built, tmp_path):
    mode = os.environ.get("FREEZEFRAME_PACKAGE_INSTALL", "link")
    started = time.monotonic()
    wheel = built[1]
    python, pip = new_venv(tmp_path / "venv", mode)
    offline = ["--no-index"] if mode != "index" else []
    lock = str(ROOT / "constraints.txt")
    installed = subprocess.run([*pip, "install", "--quiet", "--no-compile", *offline, "-c", lock, str(wheel)],
                               capture_output=True, text=True, env=pip_env(), cwd=tmp_path)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    checked = subprocess.run([*pip, "check"], capture_output=True, text=True, env=pip_env(), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    install_s = time.monotonic() - started

    work = tmp_path / "elsewhere"  # outside the checkout, no experiments/ here
    work.mkdir()
    command = str(python.parent / "freezeframe")
    env = pip_env(MLFLOW_TRACKING_URI=store_in(tmp_path), MLFLOW_DISABLE_TELEMETRY="true", TQDM_DISABLE="1",
                  OMP_NUM_THREADS="1")
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        env.pop(name, None)

    def run(*args: str) -> str:
        done = subprocess.run(list(args), capture_output=True, text=True, env=env, cwd=work, timeout=300)
        assert done.returncode == 0, f"{args}\n{(done.stdout + done.stderr)[-3000:]}"
        return done.stdout

    where = run(str(python), "-c", "import freezeframe, pipelines, tracking; "
                "from freezeframe import cli; print(freezeframe.__file__, pipelines.__file__, tracking.__file__, "
                "cli.resolve_experiment(cli.DEFAULT_EXPERIMENT), cli.resolve_experiment('experiments/last_n.yaml'))")
    site = str(tmp_path / "venv")
    assert all(path.startswith(site) for path in where.split()), where  # the wheel's code, not the checkout's
    assert run(command, "--version") == f"freezeframe {VERSION}\n"
    assert "train" in run(command, "--help")
    # no --experiment: the default, experiments/quickstart.yaml, comes from the installed package
    run(command, "train", "--epochs", "1", "--backbone", "timm/test_resnet", "--weights", "none",
        "--dataset", "digits", "--image_size", "32", "--max_samples", "40", "--batch_size", "16",
        "--log_model", "false", "--set", "tracking.experiment_name=package", "--set", "tracking.system_metrics=false")
    (only,) = runs_in(env["MLFLOW_TRACKING_URI"])
    assert only.info.status == "FINISHED"
    assert only.data.tags["version.freezeframe"] == VERSION
    assert only.data.params["data.image_size"] == "32" and only.data.params["train.epochs"] == "1"
    quickstart = yaml.safe_load((ROOT / "experiments" / "quickstart.yaml").read_text())
    assert float(only.data.params["train.lr"]) == quickstart["train"]["lr"]  # read from the package data
    assert (work / "checkpoints").is_dir()
    print(f"{mode}: venv made and wheel installed in {install_s:.1f} s, all in {time.monotonic() - started:.1f} s")
