"""The files that install and launch the project agree with each other."""

import re

import yaml

from tests.conftest import ROOT


def pins(lines):
    return dict(re.match(r"([A-Za-z0-9_.\-]+)==(\S+)", line.strip()).groups()
                for line in lines if re.match(r"\s*[A-Za-z0-9_.\-]+==", line))


def test_conda_env_pins_match_requirements():
    requirements = pins((ROOT / "requirements.txt").read_text().splitlines())
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    pip_section = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert pins(pip_section) == requirements
    assert "python=3.11" in conda["dependencies"]


def test_requirements_are_all_pinned_and_locked():
    lines = [line for line in (ROOT / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    requirements = pins(lines)
    assert len(requirements) == len(lines), "every direct dependency is pinned with =="
    lock = {k.lower(): v for k, v in pins((ROOT / "constraints.txt").read_text().splitlines()).items()}
    for name, version in requirements.items():
        assert lock.get(name.lower()) == version, f"{name} differs between requirements.txt and constraints.txt"


def test_readme_starts_with_the_two_commands_and_ci_runs_the_tests():
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```(?:bash|sh)?\n(.*?)```", readme, re.S).group(1).split()
    assert first_block == ["make", "run", "make", "test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
