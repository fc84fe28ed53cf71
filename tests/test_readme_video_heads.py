"""
The README's "Video heads in your detectron2 model", run as written (at the tests' size): its
two stages on the model zoo's R50-FPN config, then the user's own aggregation (the README's
WindowMax, in a module of the user's) through the README's script, under two processes.
"""

import re
import shlex
import shutil
from pathlib import Path

import pytest
from _testing import FPN_AGGREGATIONS, TINY_FPN, run_readme_command

REPO_ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Video heads in your detectron2 model"
# Appended to every command: the tests' size (2 iterations, tiny widths, 64-px frames) on CPU.
TINY = shlex.join(
    [*TINY_FPN, "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
     "MODEL.DEVICE", "cpu"]
)  # fmt: skip
# The first stage starts from the zoo's ImageNet weights, which need the network: from scratch.
FROM_SCRATCH = "MODEL.WEIGHTS ''"
# STSN's widths and window at the tests' size.
STSN_TINY = shlex.join(FPN_AGGREGATIONS["STSNAggregation"])


def _readme_blocks(language, section=SECTION):
    """The ``language`` code blocks of a README section, in order."""
    text = (REPO_ROOT / "README.md").read_text()
    start = text.index(section + "\n")
    end = text.find("\n## ", start + len(section))
    return re.findall(rf"```{language}\n(.*?)```", text[start:end], re.S)


def _commands(block):
    """The commands of a bash block (continuation lines joined)."""
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def project(tmp_path_factory, synthetic_datasets):
    """
    A folder as the README's user has it: train_net.py, their my_method.py (the README's
    WindowMax) and train_my_method.py next to it.
    """
    folder = tmp_path_factory.mktemp("video_heads")
    shutil.copy(REPO_ROOT / "train_net.py", folder)
    (window_max,) = [
        code
        for code in _readme_blocks("python", "## Adding a video method")
        if "class WindowMax" in code
    ]
    (folder / "my_method.py").write_text(window_max)
    (script,) = _readme_blocks("python")
    assert script.startswith("# train_my_method.py")
    (folder / "train_my_method.py").write_text(script)
    return folder


def _run(project, command):
    run = run_readme_command(project, command, timeout=600)
    assert run.returncode == 0, f"{command}\n{run.stderr[-3000:]}"
    return run


def _evaluated(log):
    return "VID evaluation of 'synthetic_vid_val'" in log and "Per-category ImageNet VID AP" in log


@pytest.fixture(scope="module")
def two_stages(project):
    """The README's two commands: the single-frame detector, then STSN from its checkpoint."""
    block, _ = _readme_blocks("bash")
    single_frame, stsn = _commands(block)
    assert "OUTPUT_DIR output/fpn/single_frame" in single_frame
    assert "MODEL.WEIGHTS output/fpn/single_frame/model_final.pth" in stsn
    _run(project, f"{single_frame} {TINY} {FROM_SCRATCH}")
    _run(project, f"{stsn} {TINY} {STSN_TINY}")
    return project / "output" / "fpn"


def test_two_stages_train_and_evaluate_from_the_single_frame_checkpoint(two_stages):
    for stage in ("single_frame", "stsn"):
        log = (two_stages / stage / "log.txt").read_text()
        assert (two_stages / stage / "model_final.pth").is_file(), stage
        assert _evaluated(log), stage
    log = (two_stages / "stsn" / "log.txt").read_text()
    assert "single_frame/model_final.pth" in log
    # Everything but the aggregation comes from the checkpoint, in one line; the aggregation
    # once, for p2-p6.
    (line,) = [x for x in log.splitlines() if "start at their initialisation" in x]
    modules = re.search(r"initialisation \((.*)\)$", line).group(1).split(", ")
    assert {m.split(".")[0] for m in modules} == {"temporal_aggregation"}, line
    assert "not found in the checkpoint" not in log


def test_the_users_own_aggregation_trains_under_two_processes_through_their_script(
    project, two_stages
):
    _, block = _readme_blocks("bash")
    (command,) = _commands(block)
    assert command.startswith("python train_my_method.py --num-gpus 2 ")
    assert "MODEL.VIDEO.AGGREGATION WindowMax" in command
    _run(project, f"{command} {TINY}")
    log = (two_stages / "window_max" / "log.txt").read_text()
    assert "Rank of current process: 0. World size: 2" in log
    assert "WindowMax" in log and _evaluated(log)
