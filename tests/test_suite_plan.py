"""The suite's plan for --jobs (benchmarks/suite/suite.py): units that run at the same time never
train the same run folder, and a unit that reuses another configuration's learning rate, teacher
or runs starts only after that configuration's unit has finished."""
import argparse
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks" / "suite"), str(ROOT / "benchmarks" / "real")]
import suite  # noqa: E402


def plan(*argv):
    p = argparse.ArgumentParser()
    suite.add_arguments(p)
    return suite.stages(p.parse_args(["--weights", "w", "--tasks-root", "t", "--runs", "r", *argv]))


def sources(name):
    """The configurations whose runs or learning-rate runs a unit of ``name`` reads."""
    options = suite.CONFIGS[name][2]
    return {s for s in (suite.SAME_LR_AS.get(name), suite.EVALUATES.get(name), options.get("teacher_from")) if s}


@pytest.mark.parametrize("configs", [None, "lora+class-attention@0.7+teacher-lora,sparse-tuning+class-attention@0.7+self-distill",
                                     "lora+class-attention@0.7+dense-trained,linear"])
def test_units_of_a_stage_share_nothing_and_sources_come_first(configs):
    first, second = plan(*(["--configs", configs] if configs else []))
    assert len(set(first)) == len(first) and len(set(second)) == len(second)
    assert all(not sources(name) for _, name in first)  # a first-stage unit chooses its own learning rate
    for task, name in second:
        for source in sources(name):
            assert (task, source) in first, (task, name, source)
    # a source never waits in the second stage, where a unit that needs it could train it at once
    assert {(t, s) for t, n in second for s in sources(n)}.isdisjoint(second)


def test_every_configuration_and_task_is_planned_once():
    first, second = plan()
    planned = sorted(first + second)
    expected = sorted((t, n) for n in suite.CONFIGS for t in suite.TASKS if t in suite.ONLY_TASKS.get(n, suite.TASKS))
    assert planned == expected


def test_abbreviated_options_are_refused_so_that_a_unit_never_inherits_the_parents_jobs(capsys):
    with pytest.raises(SystemExit):
        suite.main(["--weights", "w", "--tasks-root", "t", "--runs", "r", "--job", "13", "--phases", "none"])
    assert "unrecognized arguments: --job" in capsys.readouterr().err


def test_a_unit_is_the_same_command_with_its_own_task_configuration_and_phase():
    argv = ["--weights", "w", "--jobs", "13", "--tasks=mnist", "--configs", "lora", "--phases", "runs", "--quick"]
    assert suite.strip_options(argv, ("--tasks", "--configs", "--phases", "--jobs")) == ["--weights", "w", "--quick"]
