"""Packaging: the conda environment and pyproject.toml name the same dependencies, Binder's environment
(binder/) is a subset that holds every runtime dependency, both install into a fresh environment, the
wheel holds every subpackage, and the module paths the README and the tutorials name keep working."""
import os
import re
import subprocess
import sys
import threading
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PIP = {"pytorch": "torch", "ray-tune": "ray", "python-kaleido": "kaleido"}  # conda-forge names that differ from PyPI's
CONDA_ONLY = {"python", "pip"}
ENVIRONMENT = ROOT / "environment.yml"
BINDER = ROOT / "binder"
WEBSITE_ONLY_EXTRAS = {"docs"}  # make book's tools: not in the conda environment nor on Binder


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _environment(path: Path = ENVIRONMENT) -> dict:
    return yaml.safe_load(path.read_text())


def _conda_names(path: Path = ENVIRONMENT) -> set[str]:
    names = {_name(d) for d in _environment(path)["dependencies"] if isinstance(d, str)}
    return {CONDA_TO_PIP.get(n, n) for n in names - CONDA_ONLY}


def _pyproject_names(extras: bool = True) -> set[str]:
    """The names pyproject.toml requires, with those of its extras (website-only extras left out)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra, names in project["optional-dependencies"].items():
        if extras and extra not in WEBSITE_ONLY_EXTRAS:
            requirements += names
    return {_name(r) for r in requirements}


def test_environment_yml_matches_pyproject():
    assert _conda_names() == _pyproject_names()


def test_environment_yml_installs_the_package_and_cpu_torch():
    deps = _environment()["dependencies"]
    assert "python=3.11" in deps
    assert "pytorch=*=cpu*" in deps
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict))
    assert "-e ." in pip_section


def _pip_equivalent(path: Path = ENVIRONMENT) -> list[str]:
    """A conda environment file as pip requirements: conda names mapped to PyPI's."""
    requirements = []
    for dep in _environment(path)["dependencies"]:
        if isinstance(dep, str) and _name(dep) not in CONDA_ONLY:
            requirements.append(CONDA_TO_PIP.get(_name(dep), _name(dep)) + dep[len(_name(dep)):].split("=*")[0])
    return requirements


def _tutorial_imports() -> set[str]:
    """Top-level modules imported by any tutorial's code cells."""
    import ast
    import json

    modules = set()
    for notebook in sorted((ROOT / "tutorials").glob("*.ipynb")):
        for cell in json.loads(notebook.read_text())["cells"]:
            if cell["cell_type"] != "code":
                continue
            for node in ast.walk(ast.parse("".join(cell["source"]))):
                if isinstance(node, ast.Import):
                    modules |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    modules.add(node.module.split(".")[0])
    return modules


PIP_INSTALL = ["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile"]  # after a python
_INSTALLS_ROOT = threading.Lock()  # pip install -e . writes lfads_nb.egg-info into the checkout: one at a time


def _fresh_environment(venv: Path, requirements: list[str], then=None) -> str:
    """A new venv with a CPU torch first (never a bare torch), then ``requirements``, then ``then(python)``
    (the step that installs this checkout, ``pip install -e .`` or Binder's postBuild); its python.

    pip is told not to byte-compile what it installs (``--no-compile``): compiling every module of
    torch, ray and jupyterlab was most of an install's time, and an import compiles what it reads."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    torch = os.environ.get("LFADS_NB_TORCH", "torch==2.13.0")
    pip = [python, *PIP_INSTALL]
    subprocess.run(pip + [torch], check=True)
    subprocess.run(pip + [r for r in requirements if _name(r) != "torch"], check=True)
    if then is not None:
        with _INSTALLS_ROOT:
            then(python)
    return python


def _pip_install_checkout(python: str) -> None:
    """environment.yml's pip section (``-e .``), installed after its list, as conda does."""
    subprocess.run([python, *PIP_INSTALL, "-e", str(ROOT)], check=True)


def _binder_post_build(python: str) -> None:
    """binder/postBuild run as Binder runs it: from the repository root, the environment's python first on PATH."""
    env = dict(os.environ, PATH=f"{Path(python).parent}{os.pathsep}{os.environ['PATH']}")
    subprocess.run([str(BINDER / "postBuild")], cwd=ROOT, env=env, check=True)


FRESH_ENVIRONMENTS = {  # test -> (environment file, the step that installs this checkout)
    "test_a_fresh_environment_from_environment_yml_imports_every_tutorial_module": (ENVIRONMENT, _pip_install_checkout),
    "test_binder_installs_into_a_fresh_environment": (BINDER / "environment.yml", _binder_post_build),
}


@pytest.fixture(scope="module")
def fresh_environments(request, tmp_path_factory) -> dict:
    """The selected tests' fresh environments, built side by side (one pip process each, so the
    two cores of a small machine build both in the time of one): test name -> future of its python."""
    selected = {item.originalname for item in request.session.items} & set(FRESH_ENVIRONMENTS)
    with ThreadPoolExecutor(max(1, len(selected))) as pool:
        yield {name: pool.submit(_fresh_environment, tmp_path_factory.mktemp("fresh") / "env",
                                 _pip_equivalent(FRESH_ENVIRONMENTS[name][0]), FRESH_ENVIRONMENTS[name][1])
               for name in sorted(selected)}


def _assert_imports_every_tutorial_module(python: str, cwd) -> None:
    modules = sorted(_tutorial_imports())
    assert {"lfads_nb", "data_generators", "torch", "plotly"} <= set(modules)
    result = subprocess.run([python, "-c", "import " + ", ".join(modules)], capture_output=True, text=True, cwd=cwd)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_fresh_environment_from_environment_yml_imports_every_tutorial_module(fresh_environments, tmp_path):
    """The conda environment, built the pip way: a new venv gets exactly environment.yml's list, then its
    pip section (``-e .``)."""
    python = fresh_environments["test_a_fresh_environment_from_environment_yml_imports_every_tutorial_module"].result()
    _assert_imports_every_tutorial_module(python, tmp_path)


def test_binder_environment_is_cpu_torch_without_the_local_package():
    """Binder's environment has no local pip entry (so a commit does not rebuild it), CPU torch, and
    every runtime dependency, because postBuild installs the package with --no-deps."""
    deps = _environment(BINDER / "environment.yml")["dependencies"]
    assert "python=3.11" in deps and "pytorch=*=cpu*" in deps
    assert not [d for d in deps if isinstance(d, dict)], "no pip section: postBuild installs the package"
    names = _conda_names(BINDER / "environment.yml")
    assert names <= _pyproject_names(), names - _pyproject_names()
    assert _pyproject_names(extras=False) <= names, _pyproject_names(extras=False) - names
    post_build = (BINDER / "postBuild").read_text()
    assert os.access(BINDER / "postBuild", os.X_OK) and "--no-deps" in post_build


def test_binder_installs_into_a_fresh_environment(fresh_environments, tmp_path):
    """Binder's steps, the pip way: binder/environment.yml's list into a new venv, then binder/postBuild
    run as Binder runs it (from the repository root, the environment's python first on PATH)."""
    python = fresh_environments["test_binder_installs_into_a_fresh_environment"].result()
    _assert_imports_every_tutorial_module(python, tmp_path)


def test_pyproject_finds_every_subpackage():
    """The wheel holds every folder of lfads_nb with Python files: pyproject's include reaches subpackages."""
    from setuptools import find_packages

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "lfads_nb").rglob("*.py")}
    assert folders - set(find_packages(where=str(ROOT), include=include)) == set()


def test_the_public_names_are_flat_and_the_old_module_paths_are_gone():
    """``lfads_nb.pbt`` is the function (no module shadows it); the modules live in their
    subpackages only, so ``import lfads_nb.pbt`` fails as for any name that is not a module."""
    code = """
import importlib
import lfads_nb, lfads_nb.tune.pbt, lfads_nb.tune.ray_backend, lfads_nb.tune.search
from lfads_nb.models import NDT, StitchedLFADS
assert lfads_nb.pbt is lfads_nb.tune.pbt.pbt and callable(lfads_nb.pbt)
assert lfads_nb.ray_pbt is lfads_nb.tune.ray_backend.ray_pbt
assert lfads_nb.random_search is lfads_nb.tune.search.random_search
assert lfads_nb.score is lfads_nb.metrics.score
assert lfads_nb.NDT is NDT and lfads_nb.StitchedLFADS is StitchedLFADS and lfads_nb.Explorer
for old in ("lfads_nb.pbt", "lfads_nb.search", "lfads_nb.ray_backend"):
    try:
        importlib.import_module(old)
    except ModuleNotFoundError:
        continue
    raise AssertionError(old + " still imports")
assert set(lfads_nb.__all__) <= set(dir(lfads_nb))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]


def _documented_paths() -> set[str]:
    """Every dotted ``lfads_nb.<name>...`` in the README and in the tutorials' cells."""
    import json

    texts = [(ROOT / "README.md").read_text()]
    for notebook in sorted((ROOT / "tutorials").glob("*.ipynb")):
        texts += ["".join(cell["source"]) for cell in json.loads(notebook.read_text())["cells"]]
    return {m for text in texts for m in re.findall(r"\blfads_nb(?:\.[A-Za-z_]\w*)+", text)}


def test_every_path_the_readme_and_tutorials_name_resolves():
    import importlib

    paths = _documented_paths()
    assert "lfads_nb.train" in paths
    for path in sorted(paths):
        parts = path.split(".")
        for n in range(len(parts), 0, -1):  # the longest prefix that is a module, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:n]))
                break
            except ModuleNotFoundError:
                continue
        for name in parts[n:]:
            assert hasattr(obj, name), f"{path}: {'.'.join(parts[:n])} has no {name}"
            obj = getattr(obj, name)
