"""Accuracy recovery by distillation: the KL term by hand, the every-token teacher pass, its lack
of gradients, and the training loss of a step against an independent computation."""
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_vit
from data_files import make_folder

import sparse_tuning as st
from sparse_tuning.cli import main
from sparse_tuning.training.config import resolve_config
from sparse_tuning.training.distill import Distillation, distill_loss, every_token
from sparse_tuning.training.loop import Trainer
from sparse_tuning.training.run import build_model, load_data, load_run

MODEL = "st_vit_micro_patch4_32"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("data") / "ds", classes=3, train=8, val=4)


def test_the_kl_term_by_hand():
    torch.manual_seed(0)
    s, t = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    for temperature in (1.0, 2.0, 4.0):
        p = (t / temperature).softmax(-1)
        by_hand = (p * (p.log() - (s / temperature).log_softmax(-1))).sum(-1).mean() * temperature ** 2
        assert distill_loss(s, t, temperature).item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert distill_loss(t, t, 2.0).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("fields", [{"keep_rate": 0.5}, {"reduction": "random", "keep_rate": 0.5},
                                    {"reduction": "tome", "tome_r": [4]}])
def test_every_token_is_the_model_at_keep_rate_1_and_is_restored(fields):
    torch.manual_seed(0)
    model = st.apply(tiny_vit(), st.SparseTuningConfig(**fields)).eval()
    for blk in model.blocks:  # adapters that compute something (up starts at zero)
        torch.nn.init.normal_(blk.adapter.up.weight, std=0.02)
    x = torch.randn(2, 3, 32, 32)
    plain = st.apply(tiny_vit(), st.SparseTuningConfig(keep_rate=1.0)).eval()
    plain.load_state_dict(model.state_dict())
    before = (model.sparse_tuning.config.keep_rate, model.sparse_tuning.config.tome_r)
    with torch.no_grad(), every_token(model):
        full = model(x)
        assert model.sparse_tuning.last_tokens[-1][1] == 65  # every patch and the class token
    assert (model.sparse_tuning.config.keep_rate, model.sparse_tuning.config.tome_r) == before
    with torch.no_grad():
        assert torch.allclose(full, plain(x), atol=1e-5)
        assert not torch.allclose(model(x), full, atol=1e-3)  # reduced again after the block


def test_the_teacher_pass_takes_no_gradient_and_the_gradient_is_the_students():
    """Gradients of CE + w * KL equal those computed with the every-token logits as a constant;
    the teacher's forward runs with gradients off."""
    torch.manual_seed(0)
    model = st.apply(tiny_vit(num_classes=3), st.SparseTuningConfig(keep_rate=0.5))
    for blk in model.blocks:
        torch.nn.init.normal_(blk.adapter.up.weight, std=0.02)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    grad_modes = []
    hook = model.register_forward_pre_hook(lambda m, a: grad_modes.append(torch.is_grad_enabled()))
    distill = Distillation(self_weight=0.7, temperature=2.0)
    logits = model(x)
    loss = F.cross_entropy(logits, y) + distill.loss(model, x, logits)
    hook.remove()
    assert grad_modes == [True, False]
    params = [p for p in model.parameters() if p.requires_grad]
    ours = torch.autograd.grad(loss, params)
    with torch.no_grad(), every_token(model):
        constant = model(x)
    logits = model(x)
    independent = F.cross_entropy(logits, y) + 0.7 * 4.0 * F.kl_div(
        (logits / 2).log_softmax(-1), (constant / 2).softmax(-1), reduction="batchmean")
    for a, b in zip(ours, torch.autograd.grad(independent, params)):
        assert torch.allclose(a, b, atol=1e-6)


def one_step_loss(folder, tmp_path, **train):
    """The loss the trainer reports for one full-batch step (24 images, order-free), and the
    model and batch it was computed on, before the update."""
    cfg = resolve_config({"model": MODEL, "pretrained": False, "data": f"folder:{folder}", "method": "sparse-tuning",
                          "augment": "none", "sparse_tuning": {"keep_rate": 0.5},
                          "train": {"epochs": 1, "batch_size": 24, "lr": 1e-3, "num_workers": 0, **train}})
    data = load_data(cfg, build_model(cfg, 3))
    cfg.num_classes, cfg.classes = data.num_classes, list(data.classes)
    model = build_model(cfg, 3)
    for blk in model.blocks:
        torch.nn.init.normal_(blk.adapter.up.weight, std=0.02)
    from sparse_tuning.training.run import teacher_model

    distill = Distillation(cfg.train.self_distill, teacher_model(cfg, model), cfg.train.teacher_weight,
                           cfg.train.distill_temperature)
    x = torch.stack([data.train[i][0] for i in range(24)])
    y = torch.tensor([data.train[i][1] for i in range(24)])
    with torch.no_grad():
        logits = model(x)
        with every_token(model):
            full = model(x)
    trainer = Trainer(model, data, cfg.train, tmp_path / "run", distill=distill)
    loader, _ = trainer.loader(0)
    loss, _, _ = trainer.step(iter(loader))
    return loss, logits, full, y


def test_a_step_with_self_distillation_adds_the_kl_term(folder, tmp_path):
    """Fails if the term is dropped: the loss a step reports is CE + w * T^2 * KL, computed here
    independently from the model's reduced and every-token logits on the same batch."""
    loss, logits, full, y = one_step_loss(folder, tmp_path, self_distill=0.5, distill_temperature=2.0)
    kl = F.kl_div((logits / 2).log_softmax(-1), (full / 2).softmax(-1), reduction="batchmean") * 4
    assert kl > 1e-4  # the term is not negligible: dropping it changes the loss
    assert loss == pytest.approx(F.cross_entropy(logits, y).item() + 0.5 * kl.item(), rel=1e-5)
    plain, *_ = one_step_loss(folder, tmp_path / "plain")
    assert plain == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)


def test_a_trained_run_as_teacher(folder, tmp_path, capsys):
    teacher = tmp_path / "teacher"
    assert main(["train", "--model", MODEL, "--no-pretrained", "--data", f"folder:{folder}", "--method", "lora",
                 "--epochs", "1", "--batch-size", "8", "--num-workers", "0", "--out", str(teacher)]) == 0
    loss, logits, _, y = one_step_loss(folder, tmp_path, teacher=str(teacher), teacher_weight=2.0)
    model, _ = load_run(teacher)  # the teacher's logits on the same batch, from the run as load_run rebuilds it
    cfg = resolve_config({"model": MODEL, "pretrained": False, "data": f"folder:{folder}", "augment": "none"})
    data = load_data(cfg, build_model(cfg, 3))
    data_x = torch.stack([data.train[i][0] for i in range(24)])
    with torch.no_grad():
        taught = model(data_x)
    kl = F.kl_div(logits.log_softmax(-1), taught.softmax(-1), reduction="batchmean")
    assert kl > 1e-4
    assert loss == pytest.approx(F.cross_entropy(logits, y).item() + 2.0 * kl.item(), rel=1e-5)
    # through the command line: the summary names it, config.json records it
    run = tmp_path / "student"
    assert main(["train", "--model", MODEL, "--no-pretrained", "--data", f"folder:{folder}", "--epochs", "1",
                 "--batch-size", "8", "--num-workers", "0", "--teacher", str(teacher), "--self-distill", "1",
                 "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "distillation: self (every-token pass, weight 1) + teacher run (weight 1), temperature 1" in out
    recorded = json.loads((run / "config.json").read_text())["train"]
    assert recorded["teacher"] == str(teacher) and recorded["self_distill"] == 1


def test_distillation_mistakes_are_one_line(folder, tmp_path, capsys):
    base = ["train", "--model", MODEL, "--no-pretrained", "--data", f"folder:{folder}", "--epochs", "1",
            "--batch-size", "8", "--num-workers", "0"]
    assert main([*base, "--method", "lora", "--self-distill", "1", "--out", str(tmp_path / "a")]) == 2
    assert "keeps every token" in capsys.readouterr().err
    assert main([*base, "--teacher", str(tmp_path / "nothing"), "--out", str(tmp_path / "b")]) == 2
    assert "is not a trained run folder" in capsys.readouterr().err
    other = make_folder(tmp_path / "other", classes=2, train=8, val=4)
    teacher = tmp_path / "t2"
    assert main(["train", "--model", MODEL, "--no-pretrained", "--data", f"folder:{other}", "--method", "linear",
                 "--epochs", "1", "--batch-size", "8", "--num-workers", "0", "--out", str(teacher)]) == 0
    capsys.readouterr()
    assert main([*base, "--teacher", str(teacher), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "trained on 2 classes" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()


def test_the_every_token_teacher_runs_in_evaluation_mode():
    """Fails if the teacher pass runs in training mode: with dropout on, its logits would be a new
    random draw each call; here the term is the KL to the model's deterministic evaluation pass,
    and the model goes back to training mode."""
    torch.manual_seed(0)
    model = st.apply(tiny_vit(num_classes=3, drop_rate=0.5, proj_drop_rate=0.5), st.SparseTuningConfig(keep_rate=0.5))
    for blk in model.blocks:
        torch.nn.init.normal_(blk.adapter.up.weight, std=0.02)
    x, student = torch.randn(4, 3, 32, 32), torch.randn(4, 3)
    model.eval()
    with torch.no_grad(), every_token(model):
        full = model(x)
    model.train()
    distill = Distillation(self_weight=1.0)
    first, second = distill.loss(model, x, student), distill.loss(model, x, student)
    assert model.training
    assert first.item() == pytest.approx(distill_loss(student, full, 1.0).item(), rel=1e-6) == second.item()


def test_the_training_loop_alone_takes_self_distillation_from_its_config(folder, tmp_path):
    """loop.Trainer without a Distillation given uses cfg.self_distill (the library path); a
    teacher run and a random keep rate need what only the caller can give, and say so."""
    with_term, *_ = one_step_loss(folder, tmp_path / "given", self_distill=0.5)
    cfg = resolve_config({"model": MODEL, "pretrained": False, "data": f"folder:{folder}", "method": "sparse-tuning",
                          "augment": "none", "sparse_tuning": {"keep_rate": 0.5},
                          "train": {"epochs": 1, "batch_size": 24, "lr": 1e-3, "num_workers": 0, "self_distill": 0.5}})
    data = load_data(cfg, build_model(cfg, 3))
    model = build_model(cfg, 3)
    for blk in model.blocks:
        torch.nn.init.normal_(blk.adapter.up.weight, std=0.02)
    trainer = Trainer(model, data, cfg.train, tmp_path / "run")
    assert trainer.distill.active and trainer.distill.self_weight == 0.5
    loss, _, _ = trainer.step(iter(trainer.loader(0)[0]))
    assert loss == pytest.approx(with_term, rel=1e-5)
    import dataclasses

    with pytest.raises(ValueError, match="TrainConfig.teacher names a run folder"):
        Trainer(model, data, dataclasses.replace(cfg.train, teacher=str(tmp_path)), tmp_path / "t")
    with pytest.raises(ValueError, match="keep_rate_random are the method's schedule"):
        Trainer(model, data, dataclasses.replace(cfg.train, keep_rate_random=0.5), tmp_path / "r")


@pytest.mark.parametrize("options,message", [
    ({"train": {"teacher": "somewhere", "teacher_weight": 0}}, "teacher_weight=0 turns the --teacher term off"),
    ({"train": {"keep_rate_random": 0.8}}, "above the keep rate 0.7 that evaluation uses"),
    ({"train": {"keep_rate_random": 1.0}}, "keep_rate_random=1 draws only keep rate 1"),
    ({"train": {"keep_rate_random": 0.5, "compile": True}}, "torch.compile would compile the model again"),
])
def test_recovery_options_that_cannot_work_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        resolve_config({"model": MODEL, "pretrained": False, "method": "sparse-tuning",
                        "sparse_tuning": {"keep_rate": 0.7}, **options})
