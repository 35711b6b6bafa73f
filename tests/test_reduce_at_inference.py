"""Train dense, reduce at inference: a run trained on every token, evaluated with a reduction it
never trained with; the same weights under the same names."""
import pytest
import torch
from data_files import make_folder

from sparse_tuning.cli import main
from sparse_tuning.training.checkpoint import load_trainable
from sparse_tuning.training.config import resolve_config
from sparse_tuning.training.records import read_run_config
from sparse_tuning.training.run import build_model, eval_run, load_run

MODEL = "st_vit_micro_patch4_32"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    folder = make_folder(root / "ds", classes=3, train=8, val=4)
    for method in ("lora", "da-only", "sparse-tuning", "adapter", "vpt"):
        assert main(["train", "--model", MODEL, "--no-pretrained", "--data", f"folder:{folder}", "--method", method,
                     "--epochs", "1", "--batch-size", "8", "--num-workers", "0", "--out", str(root / method)]) == 0
    return root


@pytest.mark.parametrize("method,reduced_as", [("lora", "lora"), ("da-only", "sparse-tuning"), ("adapter", "adapter"),
                                              ("vpt", "vpt")])
@pytest.mark.parametrize("rule,extra", [("class-attention", {"keep_rate": 0.5}), ("random", {"keep_rate": 0.5}),
                                        ("tome", {"tome_r": 4})])
def test_a_dense_run_reduced_at_inference_is_the_reducing_model_with_its_weights(runs, method, reduced_as, rule, extra):
    """Equal to the reducing method built by hand from the run's config, with the run's weights."""
    model, cfg = load_run(runs / method, reduction=rule, **extra)
    recorded = read_run_config(runs / method)
    fields = {"reduction": rule, **({"tome_r": [extra["tome_r"]]} if "tome_r" in extra else {}),
              **({"keep_rate": extra["keep_rate"]} if "keep_rate" in extra else {})}
    by_hand = resolve_config({"model": MODEL, "pretrained": False, "method": reduced_as, "sparse_tuning": fields})
    assert cfg.method == reduced_as and cfg.sparse_tuning == by_hand.sparse_tuning
    expected = build_model(by_hand, recorded.num_classes)
    load_trainable(expected, runs / method / "trainable.safetensors")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.manual_seed(0)
        ours = model(x)
        torch.manual_seed(0)
        theirs = expected.eval()(x)
    assert torch.equal(ours, theirs)
    tokens = model.sparse_tuning.last_tokens
    assert tokens[-1][1] < tokens[0][0]  # it did reduce


@pytest.mark.parametrize("method", ["lora", "da-only", "adapter", "vpt"])
def test_keep_rate_1_is_the_run_itself(runs, method):
    """Logits, not only top-1: at keep rate 1 the rebuilt model is the run's model."""
    reduced, _ = load_run(runs / method, reduction="class-attention", keep_rate=1.0)
    plain, _ = load_run(runs / method)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(reduced(x), plain(x), atol=1e-5, rtol=0)


def test_an_evaluation_with_the_random_rule_repeats_exactly(runs):
    """Seeded from the run: the global generator's state before the call does not matter."""
    torch.manual_seed(1)
    first = eval_run(runs / "lora", reduction="random", keep_rate=0.3, write=False)
    torch.manual_seed(2)
    second = eval_run(runs / "lora", reduction="random", keep_rate=0.3, write=False)
    assert first["loss"] == second["loss"] and first["top1"] == second["top1"]


def test_reduce_at_inference_from_the_command_line_and_its_mistakes(runs, capsys):
    assert main(["eval", "--run", str(runs / "lora"), "--reduction", "class-attention", "--keep-rate", "0.5"]) == 0
    assert "class-attention, keep rate 0.5" in capsys.readouterr().out
    assert (runs / "lora" / "eval-val-class-attention-keep0.5.json").is_file()
    assert main(["eval", "--run", str(runs / "sparse-tuning"), "--reduction", "tome"]) == 2
    assert "already reduces tokens" in capsys.readouterr().err
    assert main(["eval", "--run", str(runs / "lora"), "--tome-r", "4"]) == 2
    assert "--tome-r goes with --reduction tome" in capsys.readouterr().err
