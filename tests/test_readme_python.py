"""
The README's ``python``, as the tests start it, is the interpreter running the tests, with its
virtualenv: one helper starts it (``_testing.run_readme_command``), and no test links an
interpreter (a link to a virtualenv's python outside its ``bin/`` runs the base interpreter,
without the virtualenv's packages, which only a virtualenv without system packages shows).
"""

import ast
import sys
from pathlib import Path

from _testing import run_readme_command

TESTS = Path(__file__).resolve().parent
LINK_CALLS = ("symlink", "symlink_to", "hardlink_to", "link")


def test_readme_python_is_the_interpreter_running_the_tests(tmp_path):
    run = run_readme_command(tmp_path, "python -c 'import sys; print(sys.prefix, sys.executable)'")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [sys.prefix, sys.executable]


def _interpreter_links(source):
    """The lines of ``source`` that link an interpreter (a link call naming python)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        function = node.func
        name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
        call = ast.unparse(node)
        if name in LINK_CALLS and ("executable" in call or "python" in call):
            lines.append(node.lineno)
    return lines


def test_the_check_finds_interpreter_links():
    source = (
        "os.symlink(sys.executable, folder / 'bin' / 'python')\n"
        "(folder / 'bin' / 'python').symlink_to(sys.executable)\n"
        "os.symlink(frames, folder / 'frames')\n"
        "run_readme_command(folder, 'python train_net.py')\n"
    )
    assert _interpreter_links(source) == [1, 2]


def test_no_test_links_an_interpreter():
    found = [
        f"{path.relative_to(TESTS.parent)}:{line}"
        for path in sorted(TESTS.rglob("*.py"))
        for line in _interpreter_links(path.read_text())
    ]
    assert not found, (
        f"{', '.join(found)} link an interpreter, which loses the running virtualenv: start the "
        "README's `python` with _testing.run_readme_command"
    )
