"""The commands of the README and of the docs pages work as written, in a fresh shell after `make install`.

It reads the ```bash blocks of README.md and of every docs/*.md page (the mkdocs site). Every line of them is
a set-up line (run before each command), a line this test runs (with tiny overrides, so it takes seconds),
or a line it deliberately does not run, with the reason. A new command on any of those pages without such a
decision fails the test, naming the page: that keeps the pages and the code together. Every `mlflow run`
and `freezeframe` line, run or not, is also checked against MLproject and the command line's parser (entry
point, parameter and flag names, experiment files), and every entry-point table (README, docs/index.md,
docs/quickstart.md) against MLproject's entry points, parameters, types and defaults: milliseconds.

The shell is bash with PATH=/usr/local/bin:/usr/bin:/bin and HOME in tmp: nothing of the test's own
interpreter leaks in, so a command that only works with `.venv/bin` on PATH fails here as it would for a
newcomer. It runs in a tmp copy of the project (the files git would commit) whose `.venv` is a symlink to
the checkout's venv, so `source .venv/bin/activate` runs exactly as written, and what the commands write
relative to their folder (`optuna.db`, `checkpoints/`, `mlruns/`, `predictions.csv`) lands in tmp, never
in the checkout; MLFLOW_TRACKING_URI names a tmp sqlite store.
"""

from __future__ import annotations

import os
import re
import resource
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, runs_in

# Lines run before each command, as written (they change the shell, not the stores).
SETUP = {
    r"source \.venv/bin/activate": "the one documented set-up: .venv's python, mlflow and freezeframe on PATH",
}

# The model the pretrain line registers; predict has no champion to load without the quickstart (minutes).
PRETRAINED = "models:/resnet18-fashion@pretrained"
TINY = {"epochs": "1", "image_size": "32", "max_samples": "24"}

# Line of a page (regex, matched from the line's start) → parameters the test sets, replacing the line's own
# value or added: `-P key=value` for `mlflow run`, `--key value` for `freezeframe`. Run in this order
# (pretrain first: its model is the one predict loads). Each command costs 15-25 s of CPU (torch, timm
# and mlflow imports, twice under `mlflow run`) and the suite has little room, so two: `mlflow run
# --env-manager local` in the activated shell (and the registry), then the `freezeframe` command.
RUN = {
    r"mlflow run \. -e pretrain --env-manager local -P registered_model=resnet18-fashion$":
        {**TINY, "backbone": "timm/test_resnet", "dataset": "digits"},  # Fashion-MNIST: a system package
    r"freezeframe predict --model models:/freezeframe-quickstart@champion --input imgs/ --top_k 3$":
        {"model": PRETRAINED},
}

# Line of a page (regex) → why this test does not run it. "Checked only" lines are still checked against
# MLproject and the parser (test_readme_commands_name_real_entry_points_parameters_and_files).
NOT_RUN = {
    r"mlflow run \. -e predict --env-manager local -P input=path/to/image\.png":
        "checked only (~24 s of CPU): the launcher path of the pretrain line run here, and the predict code "
        "of the `freezeframe predict` line run here",
    r"mlflow run \. -e train --env-manager local -P backbone=timm/resnet18 "
    r"-P weights=models:/resnet18-fashion@pretrained -P freeze=last_n:2$":
        "checked only: the same launcher path as the pretrain line run here; transfer from a models:/ URI "
        "is tests/test_pretrain.py's",
    r"mlflow run \. -e train --env-manager local --experiment-name mine ":
        "checked only: tests/test_e2e.py runs `mlflow run -e train` (one run costs ~25 s of CPU)",
    r"torchrun --standalone --nproc_per_node=2 -m freezeframe train --experiment experiments/last_n\.yaml$":
        "two processes of Lite0 at 224 px, minutes; tests/test_distributed.py runs `-e train -P devices=2` "
        "through `mlflow run` (the launcher gives each rank torchrun's environment) and kills its ranks",
    r"CUDA_VISIBLE_DEVICES=[0-7,]+ mlflow run \. -e (compare|search) --env-manager local "
    r"-P devices=[24] -P storage=\$STORAGE$":
        "needs GPUs; tests/test_distributed.py runs a comparison and a search whose arms take 2 CPU processes, "
        "and kills an arm's rank 0",
    r"freezeframe train --experiment experiments/last_n\.yaml ":
        "checked only: the `freezeframe` command is run by the predict line; train in-process is most tests'",
    r"mlflow run \. -e search --env-manager local --experiment-name search -P experiment=":
        "checked only: tests/test_search.py and test_server.py run searches (one run costs ~25 s of CPU)",
    r"mlflow run \. -e rank --env-manager local --experiment-name backbones "
    r"-P experiment=experiments/backbones\.yaml$":
        "checked only (four backbones on digits, minutes): tests/test_rank.py runs the rank entry "
        "point through `mlflow run` on two tiny timm models",
    r"make run$": "the quickstart itself, minutes; tests/test_e2e.py runs its `mlflow run -e main` tiny",
    r"make test$": "the whole suite, this test included",
    r"make lint\b": "ruff and lint-imports over the checkout, seconds; .ci/run runs it before make test",
    r"make docs(?!-)": "mkdocs build --strict, about a second; .ci/run runs it before make test",
    r"make docs-serve\b": "a server that runs until stopped (mkdocs serve)",
    r"\.venv/bin/python benchmarks/bench_(overhead|feature_cache|prefix_cache)\.py ":
        "benchmarks of repeated ~40-s runs, minutes each (docs/performance.md's figures, measured by hand)",
    r"pip install \. -c constraints\.txt":
        "tests/test_package.py builds the wheel, installs it into a new venv with the lock as constraints and "
        "runs freezeframe --version, --help and train outside the checkout",
    r"make ui\b": "a server that runs until stopped; tests/test_server.py and test_browser.py start one",
    r"make dashboard\b": "a server that runs until stopped; tests/test_dashboard.py starts one",
    r"MLFLOW_TRACKING_URI=http://127\.0\.0\.1:5000 mlflow run \. -e main ":
        "needs `make ui` running and the quickstart grid (minutes); tests/test_server.py does this tiny",
    r"mlflow run \. -e compare --env-manager local --experiment-name policies "
    r"-P experiment=experiments/policies\.yaml$":
        "22 arms, minutes on 2 cores; tests/test_compare.py runs its policies, compare.lr and eval.shifts tiny",
    r"mlflow run \. -e compare --env-manager local --experiment-name backbones "
    r"-P experiment=experiments/backbones\.yaml$":
        "60 arms, hours on 2 cores, and -P cannot shrink a grid; the compare entry point runs through "
        "`mlflow run` in tests/test_e2e.py (main), test_server.py and test_workers.py",
    r"mlflow server --app-name basic-auth --backend-store-uri postgresql":
        "placeholder PostgreSQL and S3 hosts (a tracking server); tests/test_shared_server.py runs "
        "`mlflow server --app-name basic-auth` with such a basic_auth.ini on sqlite",
    r"export (MLFLOW_AUTH_CONFIG_PATH|MLFLOW_AUTH_ADMIN_PASSWORD|MLFLOW_FLASK_SERVER_SECRET_KEY|PGPASSWORD)=":
        "secrets read from placeholder files of the tracking host and workers; tests/test_shared_server.py sets "
        "the server's for a real basic-auth server",
    r"export MLFLOW_TRACKING_USERNAME=workers MLFLOW_TRACKING_PASSWORD=":
        "a worker's login from a placeholder file; tests/test_shared_server.py runs a compare with, without and "
        "with wrong credentials",
    r"export MLFLOW_TRACKING_URI=https?://tracking-host": "placeholder tracking host",
    r"export RAY_ADDRESS=head-host:": "placeholder Ray head; tests/test_ray.py sets RAY_ADDRESS to a real cluster's",
    r"pip install 'freezeframe\[ray\]'": "Ray from the package index: make install installs it (requirements-ray.txt)",
    r"freezeframe compare .*--cluster slurm .*--dry-run":
        "needs Slurm's client commands and a cluster; tests/test_slurm.py prints such a script and submits it",
    r"sbatch backbones\.sbatch$": "needs a Slurm cluster; tests/test_slurm.py submits a --dry-run script by hand",
    r"mlflow run \. -e (compare|search) .*-P storage=postgresql":
        "placeholder PostgreSQL host; tests/test_workers.py runs such workers on a real PostgreSQL",
    r"python benchmarks/transfer_report\.py ": "78 arms on Fashion-MNIST, about an hour on 2 cores",
    r"python benchmarks/bench_compare_budget\.py ": "about 280 arms on two datasets, about 27 minutes on 2 cores; "
        "tests/test_rank.py and test_racing.py run screening and racing on tiny grids",
    r"sudo apt-get install dataset-fashion-mnist": "a system package (root, network); .ci/run installs it",
    r"mlflow run \. -e train --env-manager uv$":
        "builds a new environment from conda.yaml: downloads GBs of pinned wheels on first use",
}


def pages() -> list[Path]:
    """README.md, then every page of the docs site (docs/*.md), sorted."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def page_lines() -> list[tuple[str, str]]:
    """(page, line) for each shell line of the pages' ```bash blocks, continuation lines joined,
    comments-only lines left out; the page is its path in the repository (README.md, docs/search.md)."""
    lines = []
    for page in pages():
        for block in re.findall(r"^```bash\n(.*?)^```", page.read_text(), re.S | re.M):
            for line in re.sub(r"\\\n\s*", "", block).splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    lines.append((page.relative_to(ROOT).as_posix(), line.strip()))
    return lines


def decision(page: str, line: str) -> tuple[str, str]:
    found = [(table, pattern) for table, patterns in (("setup", SETUP), ("run", RUN), ("not run", NOT_RUN))
             for pattern in patterns if re.match(pattern, line)]
    assert len(found) == 1, (f"{page}: line {line!r} needs exactly one decision in tests/test_readme.py "
                             f"(SETUP, RUN or NOT_RUN), has {found or 'none'}")
    return found[0]


def with_overrides(line: str, overrides: dict[str, str]) -> str:
    """The line with each override replacing the line's own value of that parameter, or added at the end."""
    tokens = shlex.split(line, comments=True)
    mlflow_run = tokens[:2] == ["mlflow", "run"]
    left = dict(overrides)
    for i, token in enumerate(tokens[:-1]):
        if mlflow_run and token == "-P":
            key = tokens[i + 1].split("=", 1)[0]
            if key in left:
                tokens[i + 1] = f"{key}={left.pop(key)}"
        elif not mlflow_run and token.startswith("--") and token[2:] in left:
            tokens[i + 1] = left.pop(token[2:])
    for key, value in left.items():
        tokens += ["-P", f"{key}={value}"] if mlflow_run else [f"--{key}", value]
    return shlex.join(tokens)


def test_every_readme_command_has_a_decision():
    lines = page_lines()
    assert any(page == "README.md" for page, _ in lines) and any(page != "README.md" for page, _ in lines)
    decided = {decision(page, line) for page, line in lines}
    unused = [p for table, patterns in (("setup", SETUP), ("run", RUN), ("not run", NOT_RUN))
              for p in patterns if (table, p) not in decided]
    assert not unused, f"no line of the README or of docs/*.md matches these entries any more: {unused}"


MLFLOW_RUN_OPTIONS = {"-e", "--entry-point", "--env-manager", "--experiment-name", "--run-name", "-P"}


def test_readme_commands_name_real_entry_points_parameters_and_files():
    checked = []
    for page, line in page_lines():
        try:
            if check_command(line):
                checked.append(line)
        except (AssertionError, pytest.fail.Exception) as exc:  # check_command's asserts and pytest.fail
            raise AssertionError(f"{page}: {exc}") from exc
    assert len(checked) >= len(RUN)


def entry_point_tables() -> dict[str, dict[str, str]]:
    """page → {entry point: its parameters cell} for every table of the pages headed `| entry point |`."""
    tables = {}
    for page in pages():
        for table in re.findall(r"^\| entry point \|.*\n\|[-| ]+\|\n((?:\|.*\n?)+)", page.read_text(), re.M):
            rows = [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in table.splitlines()]
            tables[page.relative_to(ROOT).as_posix()] = {row[0].strip("`"): row[-1] for row in rows}
    return tables


def documented_parameters(cell: str) -> dict[str, tuple[str, str | None]]:
    """`a`, `b` (string, `x`), `c` (float) → {a: (string, x), b: (string, x), c: (float, None)}: a type and
    default in parentheses hold for every name since the previous parentheses."""
    params, names = {}, []
    for name, kind, default in re.findall(r"`(\w+)`|\((\w+)(?:, ([^)]*))?\)", cell):
        if name:
            names.append(name)
            continue
        given = re.match(r"`([^`]*)`|(\S+)", default.strip()) if default else None  # its first word
        value = None if given is None else given.group(1) if given.group(1) is not None else given.group(2)
        params.update({n: (kind, "" if value == '""' else value) for n in names})
        names = []
    assert not names, f"no type given for {names} in {cell!r}"
    return params


def test_entry_point_tables_match_mlproject():
    """The entry-point tables name every entry point of MLproject, each with every parameter, its type and,
    where the table gives one, its default (`main`: "as `compare`", whose parameters it has)."""
    import yaml

    entry_points = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]
    tables = entry_point_tables()
    assert "README.md" in tables, "README.md has no entry-point table"
    for page, rows in tables.items():
        assert set(rows) == set(entry_points), f"{page}: entry points {sorted(rows)} != MLproject's"
        for entry, cell in rows.items():
            declared = entry_points[entry]["parameters"]
            alias = re.fullmatch(r"as `(\w+)`", cell)
            if alias:
                assert declared == entry_points[alias.group(1)]["parameters"], f"{page}: {entry} is not as {cell}"
                continue
            documented = documented_parameters(cell)
            assert set(documented) == set(declared), \
                f"{page}: {entry} documents {sorted(documented)}, MLproject declares {sorted(declared)}"
            for name, (kind, default) in documented.items():
                assert kind == declared[name]["type"], \
                    f"{page}: {entry}'s {name} is {declared[name]['type']} in MLproject, not {kind}"
                assert default is None or default == str(declared[name]["default"]), \
                    f"{page}: {entry}'s {name} defaults to {declared[name]['default']!r}, not {default!r}"


def test_make_run_hints_are_the_readme_way():
    """`make run`'s closing hints: activate once, then plain commands that exist (no `.venv/bin/...` forms)."""
    recipe = re.search(r"^run:.*?\n\n", (ROOT / "Makefile").read_text(), re.S | re.M).group(0)
    hints = [h.strip().replace("$(VENV)", ".venv") for h in re.findall(r'@echo "(.*)"', recipe)]
    commands = [re.sub(r"<[^>]+>", "x.png", h) for h in hints if re.match(r"(mlflow|freezeframe|source) ", h)]
    assert commands and commands[0] == "source .venv/bin/activate", hints
    assert all(check_command(command) for command in commands[1:]), commands


def check_command(line: str) -> bool:
    """Whether `line` is an `mlflow run .` or `freezeframe` command; if it is, it names an entry point and
    parameters MLproject declares (flags the parser knows) and experiment files that exist."""
    import yaml

    from freezeframe.cli import build_parser
    from pipelines.errors import ConfigError

    tokens = shlex.split(line, comments=True)
    tokens = tokens[:next((i for i, t in enumerate(tokens) if t in (">", ">>", "|")), len(tokens))]  # the command
    while tokens and re.match(r"[A-Z_]+=", tokens[0]):  # VAR=value before the command
        tokens = tokens[1:]
    if tokens[:3] == ["mlflow", "run", "."]:
        entry_points = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]
        pairs = list(zip(tokens[3::2], tokens[4::2], strict=True))  # every option of these lines has a value
        options = dict(pairs)
        params = dict(value.split("=", 1) for flag, value in pairs if flag == "-P")
        assert set(options) <= MLFLOW_RUN_OPTIONS, f"{line}: unknown option {set(options) - MLFLOW_RUN_OPTIONS}"
        entry = options.get("-e", options.get("--entry-point", "main"))
        assert entry in entry_points, f"{line}: no entry point {entry!r} in MLproject"
        assert options.get("--env-manager") in ("local", "uv"), f"{line}: the README's ways are local and uv"
        unknown = set(params) - set(entry_points[entry].get("parameters", {}))
        assert not unknown, f"{line}: entry point {entry} has no parameter(s) {unknown}"
        experiments = [params["experiment"]] if "experiment" in params else []
    elif tokens[:1] == ["freezeframe"] or tokens[:3] == ["python", "-m", "freezeframe"]:
        argv = tokens[1:] if tokens[0] == "freezeframe" else tokens[3:]
        try:
            args = build_parser().parse_args(argv)
        except ConfigError as exc:
            pytest.fail(f"{line}: {exc}")
        experiments = [args.experiment] if "--experiment" in argv else []
    else:
        return False
    for experiment in experiments:
        assert (ROOT / experiment).is_file(), f"{line}: no experiment file {experiment}"
    return True


def project_copy(folder: Path) -> Path:
    """The files git would commit (tracked and new, not ignored), with `.venv` a link to the checkout's venv."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    copy = folder / "project"
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    (copy / ".venv").symlink_to(ROOT / ".venv")
    return copy


@pytest.mark.slow
@pytest.mark.e2e
def test_readme_commands_run_in_a_fresh_shell(tmp_path):
    if not (ROOT / ".venv" / "bin" / "activate").is_file():
        message = f"no venv at {ROOT / '.venv'}: run `make install` first"
        if os.environ.get("FREEZEFRAME_REQUIRE_README") == "1":
            pytest.fail(message + " (FREEZEFRAME_REQUIRE_README=1)")
        pytest.skip(message)
    from PIL import Image

    copy = project_copy(tmp_path)
    (copy / "path" / "to").mkdir(parents=True)
    (copy / "imgs").mkdir()
    for target in (copy / "path" / "to" / "image.png", copy / "imgs" / "a.png", copy / "imgs" / "b.png"):
        Image.new("RGB", (8, 8), (40, 200, 90)).save(target)
    (tmp_path / "home").mkdir()
    # a store the first command creates, as on a fresh machine: its Default experiment's artifacts then go
    # to the copy's mlruns/ (a store made beforehand would root them in the folder it was made from)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path / "home"), "MLFLOW_TRACKING_URI": store,
           "MLFLOW_DISABLE_TELEMETRY": "true", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8",
           # set on some processors so that old OpenBLAS builds compute correctly: kept as found
           **{k: v for k, v in os.environ.items() if k.startswith("OPENBLAS_")}}
    watched = ("mlflow.db", "optuna.db", "mlruns", "mlartifacts", "checkpoints", "predictions.csv")
    before = {name: _stamp(ROOT / name) for name in watched}

    lines = page_lines()
    setup = list(dict.fromkeys(line for page, line in lines if decision(page, line)[0] == "setup"))
    for pattern, overrides in RUN.items():
        page, line = next((page, line) for page, line in lines if re.match(pattern, line))
        command = with_overrides(line, overrides)
        started, cpu = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(["bash", "--noprofile", "--norc", "-c", "\n".join(["set -e", *setup, command])],
                              cwd=copy, env=env, capture_output=True, text=True, timeout=300)
        output = (done.stdout + done.stderr)[-3000:]
        assert done.returncode == 0, f"{page}: line failed: {line}\nran: {command}\n{output}"
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_s = used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime
        print(f"{time.monotonic() - started:5.1f} s ({cpu_s:5.1f} s CPU) {page}: {command}")  # with -s or on failure

    runs = runs_in(store)
    # pretrain's run, ended FINISHED (never a FAILED run left behind)
    assert len(runs) == 1 and {r.info.status for r in runs} == {"FINISHED"}, \
        [(r.info.run_name, r.info.status, r.data.tags.get("error")) for r in runs]
    assert (copy / "predictions.csv").is_file()  # the folder's predictions, in the copy
    assert {name: _stamp(ROOT / name) for name in watched} == before, "the pages' commands wrote into the checkout"


def _stamp(path: Path):
    return path.stat().st_mtime_ns if path.exists() else None
