"""The files that install and launch the project agree with each other."""

import re
import tomllib

import pytest
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


def requirement_lines(name: str) -> list[str]:
    return [line for line in (ROOT / name).read_text().splitlines() if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("name", ["requirements.txt", "requirements-dev.txt", "requirements-ray.txt"])
def test_requirements_are_all_pinned_and_locked(name):
    lines = requirement_lines(name)
    requirements = pins(lines)
    assert len(requirements) == len(lines), "every direct dependency is pinned with =="
    lock = {k.lower(): v for k, v in pins((ROOT / "constraints.txt").read_text().splitlines()).items()}
    for package, version in requirements.items():
        assert lock.get(package.lower()) == version, f"{package} differs between {name} and constraints.txt"


def test_the_package_reads_its_dependencies_from_the_requirements_files():
    """pyproject.toml lists no dependency itself: requirements.txt is the package's runtime list (what a
    wheel requires), requirements-dev.txt the checkout's tools (the `dev` extra); none in both."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "dependencies" not in project["project"] and "optional-dependencies" not in project["project"]
    assert set(project["project"]["dynamic"]) == {"dependencies", "optional-dependencies"}
    dynamic = project["tool"]["setuptools"]["dynamic"]
    assert dynamic["dependencies"] == {"file": ["requirements.txt"]}
    assert dynamic["optional-dependencies"] == {"dev": {"file": ["requirements-dev.txt"]},
                                                "ray": {"file": ["requirements-ray.txt"]},
                                                "slurm": {"file": ["requirements-slurm.txt"]}}
    runtime, dev = pins(requirement_lines("requirements.txt")), pins(requirement_lines("requirements-dev.txt"))
    assert not set(runtime) & set(dev)
    assert {"pytest", "ruff"} <= set(dev)


def test_readme_starts_with_the_two_commands_and_ci_runs_the_tests():
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```(?:bash|sh)?\n(.*?)```", readme, re.S).group(1).split()
    assert first_block == ["make", "run", "make", "test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
