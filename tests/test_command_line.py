"""Commands as reports show them: paths relative to the repository, the interpreter as ``python`` or relative too."""

import shutil
import sys
from pathlib import Path

from benchmarks.command_line import REPO, python_name, repo_relative


def test_paths_inside_the_repository_become_relative_and_others_stay():
    assert repo_relative(str(REPO / "demo" / "pq.json")) == "demo/pq.json"
    assert repo_relative(str(REPO)) == "."
    assert repo_relative("demo/pq.json") == "demo/pq.json"
    assert repo_relative("/elsewhere/pq.json") == "/elsewhere/pq.json"
    assert repo_relative("--out") == "--out"
    assert repo_relative(str(REPO) + "-other/x") == str(REPO) + "-other/x"  # a sibling folder is not inside


def test_interpreter_inside_the_repository_is_shown_relative_to_it():
    """``make demo`` runs REPO/.venv/bin/python: shown as .venv/bin/python unless PATH finds it as plain python."""
    interpreter = Path(sys.executable).absolute()
    found = shutil.which("python")
    on_path = found is not None and Path(found).absolute() == interpreter
    venv_root = interpreter.parents[2]  # the folder holding .venv/ (or the installation prefix's parent)
    assert python_name(venv_root) == ("python" if on_path else interpreter.relative_to(venv_root).as_posix())
    assert python_name(Path("/nonexistent-root")) == ("python" if on_path else str(interpreter))
