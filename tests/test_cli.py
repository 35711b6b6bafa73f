"""The command line: the flops report, JSON output, and user errors without a traceback."""
import json
import subprocess
import sys

import pytest

from sparse_tuning.cli import main


def run_json(capsys, *args):
    assert main(["flops", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_flops_json_vit_b(capsys):
    out = run_json(capsys, "--model", "vit_base_patch16_224")
    assert round(out["gflops"], 2) == 11.75 and round(out["dense_gflops"], 2) == 17.58
    assert out["params_total"] == 86_567_656 + 1_091_584
    assert out["params_trainable"] == 1_091_584 + 768 * 1000 + 1000
    assert out["tokens_per_block"][3] == [197, 140] and out["tokens_per_block"][-1] == [72, 72]


@pytest.mark.parametrize("args,gflops", [
    (["--method", "dense"], 17.58), (["--bottleneck", "8"], 11.66),
    (["--method", "da-only"], 17.80), (["--method", "ts-only"], 11.62),
])
def test_flops_methods(capsys, args, gflops):
    assert round(run_json(capsys, "--model", "vit_base_patch16_224", *args)["gflops"], 2) == gflops


def test_flops_text_report(capsys):
    assert main(["flops", "--model", "vit_base_patch16_224", "--keep-rate", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "197->100 | 100 x2 | 100->52" in out and "% of dense 17.58" in out


def test_flops_text_names_the_reduction_of_any_method(capsys):
    assert main(["flops", "--model", "vit_base_patch16_224", "--method", "vpt", "--reduction", "tome",
                 "--tome-r", "8"]) == 0
    out = capsys.readouterr().out
    assert "method       vpt: ToMe, r 8 per block\n" in out
    assert "207->199 | 199->191" in out  # 196 patches, the class token and 10 prompts; 8 merged per block
    assert main(["flops", "--model", "vit_base_patch16_224", "--method", "adapter", "--reduction", "random",
                 "--keep-rate", "0.5"]) == 0
    assert "adapter: random, keep rate 0.5 at blocks (3, 6, 9), merge mean\n" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["--model", "not_a_model"], "unknown timm model"),
    (["--model", "vit_base_patch16_224", "--img-size", "225"], "not divisible by the patch size"),
    (["--keep-rate", "1.5"], "keep_rate"),
    (["--method", "dense", "--keep-rate", "0.5"], "--method dense is the plain model"),
    (["--method", "dense", "--reduction", "tome"], "--method dense is the plain model"),
    (["--sparsify-at", "3,20"], "block 20 does not exist"),
    (["--reduction", "tome", "--keep-rate", "0.5"], "--keep-rate does not apply to --reduction tome"),
    (["--method", "da-only", "--reduction", "tome"], "--reduction does not apply to --method da-only"),
    (["--model", "vit_base_patch16_siglip_224"], "no class token"),
])
def test_user_errors_exit_2_with_one_line(capsys, args, message):
    assert main(["flops", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_python_dash_m_works_like_the_script():
    proc = subprocess.run([sys.executable, "-m", "sparse_tuning", "flops", "--model", "vit_tiny_patch16_224",
                           "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["tokens_per_block"][3] == [197, 140]
    proc = subprocess.run([sys.executable, "-m", "sparse_tuning", "flops", "--model", "nope"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


@pytest.mark.parametrize("args,line", [
    (["train", "--method", "sparse-tunning"],
     "sparse-tuning train: error: --method: invalid choice 'sparse-tunning'; did you mean sparse-tuning?"),
    (["train", "--epochs", "1.5"], "sparse-tuning train: error: argument --epochs: invalid int value: '1.5'"),
    (["train", "--keep-rte", "0.5"], "sparse-tuning train: error: unknown option --keep-rte; did you mean --keep-rate?"),
    (["train", "--keep-rate=0.5", "--reductoin=tome"],
     "sparse-tuning train: error: unknown option --reductoin; did you mean --reduction?"),
    (["trian"], "sparse-tuning: error: command: invalid choice 'trian'; did you mean train?"),
    (["eval", "--run", "x", "--keep-rte", "0.5"], "sparse-tuning eval: error: unknown option --keep-rte; did you mean --keep-rate?"),
    (["flops", "--reduction", "tom"], "sparse-tuning flops: error: --reduction: invalid choice 'tom'; did you mean tome?"),
    (["train", "--zzz"], "sparse-tuning train: error: unknown option --zzz"),
])
def test_argument_errors_are_one_line_naming_the_closest_choice(capsys, args, line):
    """No usage block before the error (only --help prints it), and a typo's closest valid name."""
    with pytest.raises(SystemExit) as stop:
        main(args)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(line), err
    assert "usage:" not in err


@pytest.mark.parametrize("raised,code", [("user", 2), ("bug", 1)])
def test_a_users_mistake_is_one_line_and_a_bug_keeps_its_traceback(capsys, monkeypatch, raised, code):
    """UserError (a user's mistake) is one line, exit 2; any other error, here a ValueError from
    deep inside as a library would raise it, is a bug: its traceback and a request to report it."""
    from sparse_tuning.errors import UserError
    from sparse_tuning.tools import flops

    def fail(*args, **kwargs):
        raise UserError("keep_rate=2: expected a number in (0, 1]") if raised == "user" else ValueError("boom")
    monkeypatch.setattr(flops, "model_cost", fail)
    assert main(["flops", "--model", "vit_base_patch16_224"]) == code
    err = capsys.readouterr().err
    if raised == "user":
        assert err == "sparse-tuning flops: error: keep_rate=2: expected a number in (0, 1]\n"
    else:
        assert "Traceback (most recent call last)" in err and "ValueError: boom" in err
        assert "please report it with the traceback and the command" in err
