"""
scripts/setup_env.sh in a copy of the repository, with a python whose ``-m pip`` calls are
recorded instead of run: what it installs, when it builds the extension, with which kernels.
"""

import glob
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vod_d2.layers import _ext

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMIT = "02b5c4e295e990042a714712c21dc79b731e8833"
EXTENSIONS = glob.glob(str(REPO_ROOT / "vod_d2" / "_C*.so"))

pytestmark = pytest.mark.skipif(not EXTENSIONS, reason="vod_d2._C is not built")


@pytest.fixture
def repo(tmp_path):
    """What setup_env.sh reads, copied, the extension newer than its sources."""
    copy = tmp_path / "repo"
    (copy / "vod_d2").mkdir(parents=True)
    for name in ("scripts", "csrc"):
        shutil.copytree(REPO_ROOT / name, copy / name)
    for name in ("setup.py", "requirements.txt"):
        shutil.copy(REPO_ROOT / name, copy)
    shutil.copy(EXTENSIONS[0], copy / "vod_d2")
    return copy


@pytest.fixture
def fake_python(tmp_path):
    """
    A python that logs each ``-m pip`` call (with FORCE_CUDA) instead of running it; a
    ``git+`` install "installs" detectron2 by removing the package that hides it, and
    ``pip show`` exits with ``$PIP_SHOW_STATUS`` (default 0: vod_d2 is installed).
    """
    log, shadow = tmp_path / "pip.log", tmp_path / "shadow"
    (shadow / "detectron2").mkdir(parents=True)
    (shadow / "detectron2" / "__init__.py").write_text("raise ImportError('hidden by the test')")
    script = tmp_path / "python"
    script.write_text(
        "#!/usr/bin/env bash\n"
        'if [ "$1" = -m ] && [ "$2" = pip ]; then\n'
        f'  echo "FORCE_CUDA=${{FORCE_CUDA:-}} $*" >> {log}\n'
        f'  case "$*" in *git+*) rm -rf {shadow}/detectron2 ;; esac\n'
        '  case "$3" in show) exit "${PIP_SHOW_STATUS:-0}" ;; esac\n'
        "  exit 0\n"
        "fi\n"
        f'exec {sys.executable} "$@"\n'
    )
    script.chmod(0o755)
    return script, log, shadow


def _run(repo, fake_python, hide_detectron2=False, **env):
    script, log, shadow = fake_python
    if not hide_detectron2:
        shutil.rmtree(shadow / "detectron2", ignore_errors=True)
    environment = {k: v for k, v in os.environ.items() if k not in ("FORCE_CUDA", "CUDA_HOME")}
    environment.update(PYTHON=str(script), PYTHONPATH=str(shadow), **env)
    run = subprocess.run(
        ["bash", str(repo / "scripts" / "setup_env.sh")],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    calls = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return run, calls


def _extension(repo):
    return next((repo / "vod_d2").glob("_C*.so"))


def _builds(calls):
    return [c.split()[0] for c in calls if c.endswith("--no-deps -e .")]


def test_an_up_to_date_extension_is_not_rebuilt(repo, fake_python, tmp_path):
    run, calls = _run(repo, fake_python, FORCE_CUDA="0")
    assert run.returncode == 0, run.stderr
    assert calls[0].endswith("torch==2.14.1 torchvision==0.29.2 -r requirements.txt")
    assert _builds(calls) == [] and "up to date: not rebuilt" in run.stdout
    # A newer source file: built again, without CUDA kernels when asked so.
    source = repo / "csrc" / "vision.cpp"
    os.utime(source, (time.time() + 5, time.time() + 5))
    run, calls = _run(repo, fake_python, FORCE_CUDA="0")
    assert run.returncode == 0 and _builds(calls) == ["FORCE_CUDA=0"]


def test_a_python_without_vod_d2_installed_gets_it(repo, fake_python):
    # A virtualenv made after the extension was built: up to date, but vod_d2 not installed.
    run, calls = _run(repo, fake_python, FORCE_CUDA="0", PIP_SHOW_STATUS="1")
    assert run.returncode == 0, run.stderr
    assert _builds(calls) == ["FORCE_CUDA=0"]


def test_cuda_kernels_need_force_cuda_or_nvcc_and_a_gpu(repo, fake_python, tmp_path):
    # nvcc found (a CUDA_HOME with bin/nvcc), but the kernels only when a GPU is visible.
    cuda = tmp_path / "cuda"
    (cuda / "bin").mkdir(parents=True)
    (cuda / "bin" / "nvcc").write_text("#!/bin/sh\n")
    (cuda / "bin" / "nvcc").chmod(0o755)
    os.utime(repo / "setup.py", (time.time() + 5, time.time() + 5))
    run, calls = _run(repo, fake_python, CUDA_HOME=str(cuda))
    assert run.returncode == 0, run.stderr
    assert _builds(calls) == [f"FORCE_CUDA={int(torch.cuda.is_available())}"]
    # FORCE_CUDA=1 (the CI): built with the kernels, also over an up-to-date CPU-only build.
    os.utime(_extension(repo), (time.time() + 10, time.time() + 10))
    run, calls = _run(repo, fake_python, FORCE_CUDA="1")
    assert run.returncode == 0, run.stderr
    assert _builds(calls) == ([] if _ext.extension_has_cuda() else ["FORCE_CUDA=1"])


def test_a_missing_detectron2_without_network_is_one_line(repo, fake_python):
    run, calls = _run(
        repo, fake_python, hide_detectron2=True, DETECTRON2_REPO="file:///nonexistent/detectron2"
    )
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        "detectron2 is not installed and file:///nonexistent/detectron2 cannot be reached (no "
        "network or no git): install it with `"
        f"{fake_python[0]} -m pip install --no-build-isolation "
        f"'git+file:///nonexistent/detectron2@{COMMIT}'` (or as "
        "https://detectron2.readthedocs.io/en/latest/tutorials/install.html says), then run "
        "this again."
    ]
    assert not any("git+" in c for c in calls) and _builds(calls) == []


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_missing_detectron2_is_installed_from_its_repository(repo, fake_python, tmp_path):
    upstream = tmp_path / "detectron2.git"
    subprocess.run(["git", "init", "-q", "--bare", str(upstream)], check=True)
    run, calls = _run(repo, fake_python, hide_detectron2=True, DETECTRON2_REPO=f"file://{upstream}")
    assert run.returncode == 0, run.stderr
    install = [c for c in calls if "git+" in c]
    assert install == [
        "FORCE_CUDA= -m pip install -q --disable-pip-version-check --no-build-isolation "
        f"git+file://{upstream}@{COMMIT}"
    ]
    # After torch and the requirements, before the extension.
    assert calls.index(install[0]) == 1
