"""The conda environment (Binder) and pyproject.toml name the same dependencies."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PIP = {"pytorch": "torch"}  # conda-forge names that differ from PyPI's
CONDA_ONLY = {"python", "pip"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def _conda_names() -> set[str]:
    names = {_name(d) for d in _environment()["dependencies"] if isinstance(d, str)}
    return {CONDA_TO_PIP.get(n, n) for n in names - CONDA_ONLY}


def _pyproject_names() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    return {_name(r) for r in requirements}


def test_environment_yml_matches_pyproject():
    assert _conda_names() == _pyproject_names()


def test_environment_yml_installs_the_package_and_cpu_torch():
    deps = _environment()["dependencies"]
    assert "python=3.11" in deps
    assert "pytorch=*=cpu*" in deps
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict))
    assert "-e ." in pip_section
