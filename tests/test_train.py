"""The training loop: schedule, what trains, accumulation, resume, failures, metrics."""
import json
import math

import pytest
import torch
from conftest import nan_loss_at
from data_files import make_folder
from safetensors import safe_open

import sparse_tuning as st
from sparse_tuning.training.config import resolve_config
from sparse_tuning.training.run import load_run, resume_config, train_run
from sparse_tuning.methods.base import keep_rate_at
from sparse_tuning.training.config import TrainConfig
from sparse_tuning.training.loop import TrainingError, lr_at, param_groups

MODEL = "st_vit_micro_patch4_32"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("data") / "ds", classes=3, train=8, val=4)


def config(folder, method="sparse-tuning", st_fields=None, **train):
    base = dict(epochs=2, batch_size=8, lr=1e-2, warmup_epochs=0.5, num_workers=0, log_every=1)
    return resolve_config({"model": MODEL, "pretrained": False, "data": f"folder:{folder}", "method": method,
                           "sparse_tuning": st_fields or {}, "train": {**base, **train}})


def trained_weights(run_dir):
    with safe_open(str(run_dir / "adapters.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_lr_schedule_by_hand():
    assert lr_at(0, 100, 10, 1.0, 0.0) == pytest.approx(0.1)      # warmup starts above 0
    assert lr_at(9, 100, 10, 1.0, 0.0) == pytest.approx(1.0)      # and ends at the peak
    assert lr_at(55, 100, 10, 1.0, 0.0) == pytest.approx(0.5)     # cosine half-way
    assert lr_at(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)    # the floor at the end
    assert lr_at(0, 100, 0, 1.0, 0.0) == pytest.approx(1.0)


def test_keep_rate_warmup_by_hand():
    assert [keep_rate_at(s, 10, 0.7) for s in (0, 5, 10, 20)] == pytest.approx([1.0, 0.85, 0.7, 0.7])
    assert keep_rate_at(0, 0, 0.7) == 0.7


def test_no_weight_decay_on_biases_and_1d():
    model = st.apply(__import__("timm").create_model(MODEL))
    decay, no_decay = param_groups(model, 0.05)
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05


@pytest.mark.parametrize("bad,message", [(dict(amp="fp32"), "amp='fp32': expected bf16, fp16 or off"),
                                         (dict(batch_size=0), "batch_size=0: expected an integer >= 1"),
                                         (dict(lr=0), "lr must be > 0"),
                                         (dict(grad_accum=0), "grad_accum=0: expected an integer >= 1")])
def test_bad_train_config(bad, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**bad)


def test_trains_learns_and_writes_the_run(folder, tmp_path):
    cfg = config(folder, epochs=6, lr=3e-3)
    results = train_run(cfg, tmp_path / "run")
    run = tmp_path / "run"
    assert results["final"]["top1"] > 80 and results["best"]["top1"] >= results["final"]["top1"]
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [l for l in lines if "loss" in l and "split" not in l]
    evals = [l for l in lines if l.get("split") == "val"]
    assert [l["step"] for l in steps] == list(range(1, 19)) and len(evals) == 6
    assert steps[-1]["loss"] < steps[0]["loss"]
    saved = json.loads((run / "config.json").read_text())
    assert saved["num_classes"] == 3 and saved["sparse_tuning"]["keep_rate"] == 0.7
    # Checkpoints hold the trainable weights only, never the frozen backbone.
    ckpt = run / "checkpoints" / json.loads((run / "checkpoints" / "latest.json").read_text())["folder"]
    with safe_open(str(ckpt / "trainable.safetensors"), "pt") as f:
        assert all(".adapter." in k or k.startswith("head.") for k in f.keys())


@pytest.mark.parametrize("method", ["sparse-tuning", "lora"])
def test_only_trainable_parameters_change(folder, tmp_path, method):
    """Every parameter of the model that trained, before and after: the frozen ones hold their
    exact values and every trainable one moved. Fails if anything writes to the backbone during
    training (e.g. an optimizer group or an in-place op reaching the qkv weights)."""
    from sparse_tuning.training.loop import Trainer
    from sparse_tuning.training.run import build_model, load_data

    cfg = config(folder, method=method, epochs=1)
    model = build_model(cfg, 3)
    data = load_data(cfg, model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trains = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trains and len(trains) < len(before)
    Trainer(model, data, cfg.train, tmp_path / "run", hook=st.methods.get_method(method).train_hook).run()
    after = dict(model.named_parameters())
    assert set(after) == set(before)
    for name, p in after.items():
        assert torch.equal(p, before[name]) != (name in trains), name


def test_gradient_accumulation_matches_one_big_batch(folder, tmp_path):
    one = train_run(config(folder, epochs=1), tmp_path / "a")
    two = train_run(config(folder, epochs=1, grad_accum=2), tmp_path / "b")
    wa, wb = trained_weights(tmp_path / "a"), trained_weights(tmp_path / "b")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)  # Adam amplifies float noise of tiny grads
    assert one["final"]["top1"] == two["final"]["top1"]


def test_keep_rate_warmup_anneals_training_forwards_and_not_evaluation(folder, tmp_path, monkeypatch):
    """The rate each forward ran at: training ones follow 1 -> 0.7 over the warmup's 6 steps
    (3 steps per epoch, 2 epochs), worked out here by hand; every evaluation runs at 0.7."""
    seen = spy_rates(monkeypatch)
    train_run(config(folder, epochs=2, keep_rate_warmup=2), tmp_path / "run")
    training = [rate for is_training, rate in seen if is_training]
    assert training == [1.0, 0.95, 0.9, 0.85, 0.8, 0.75]
    assert {rate for is_training, rate in seen if not is_training} == {0.7}
    logged = [l["keep_rate"] for l in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
              if "keep_rate" in l]
    assert logged == [1.0, 0.95, 0.9, 0.85, 0.8, 0.75]  # log_every=1: the rate of each step


@pytest.mark.parametrize("method,fields,logged", [
    ("lora", {"reduction": "class-attention", "keep_rate": 0.7}, {"keep_rate": 0.7}),
    ("adapter", {"reduction": "random", "keep_rate": 0.5}, {"keep_rate": 0.5}),
    ("sparse-tuning", {"keep_rate": 0.6}, {"keep_rate": 0.6}),
    ("sparse-tuning", {"reduction": "tome", "tome_r": [4]}, {}),
    ("lora", {}, {"keep_rate": 1.0}),
    ("linear", {}, {"keep_rate": 1.0}),
])
def test_the_metrics_log_the_models_own_token_reduction(folder, tmp_path, method, fields, logged):
    """The keep rate each logged step ran at, for every method (it was 1.0 for every method but
    Sparse-Tuning), and the share of the sequence that reached the last block, counted by hand:
    8x8 = 64 patches and the class token; class-attention at blocks 3, 6, 9 keeps ceil(rate x M)
    and fuses the rest into one token; ToMe merges 4 tokens in each of the 12 blocks."""
    train_run(config(folder, method=method, st_fields=fields, epochs=1), tmp_path / "run")
    steps = [l for l in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
             if "split" not in l]
    assert steps and all({k: l.get(k) for k in logged} == logged for l in steps)
    assert all(("keep_rate" in l) == bool(logged) for l in steps)
    tokens = 64
    if "keep_rate" in fields:
        for _ in range(3):  # the last block (11) reads what block 9's step left
            tokens = math.ceil(fields["keep_rate"] * tokens - 1e-6) + 1
    elif fields.get("reduction") == "tome":
        tokens = 64 - 4 * 11
    assert all(l["tokens_last_block"] == pytest.approx((1 + tokens) / 65) for l in steps)


def test_keep_rate_schedules_are_refused_where_no_keep_rate_exists(folder):
    for field in ("keep_rate_warmup", "keep_rate_random"):
        with pytest.raises(ValueError, match=f"{field} schedules .* --method lora here keeps every token"):
            config(folder, method="lora", **{field: 0.5})
        with pytest.raises(ValueError, match="reduces by tome, which has no keep rate"):
            config(folder, st_fields={"reduction": "tome"}, **{field: 0.5})
    with pytest.raises(ValueError, match="keep_rate_random=1.5"):
        config(folder, keep_rate_random=1.5)


def spy_rates(monkeypatch):
    from sparse_tuning.hosts.timm_vit import SparseTuningBlocks

    seen = []
    forward = SparseTuningBlocks.forward

    def spy(self, x):
        seen.append((self.training, round(self.st.keep_rate, 6)))
        return forward(self, x)

    monkeypatch.setattr(SparseTuningBlocks, "forward", spy)
    return seen


@pytest.mark.parametrize("method,fields", [("sparse-tuning", {}),
                                           ("lora", {"reduction": "class-attention", "keep_rate": 0.7})])
def test_random_keep_rates_are_drawn_per_step_from_seed_and_step(folder, tmp_path, monkeypatch, method, fields):
    """Each training step's rate is the draw of (seed, step), by hand here, in [0.4, 1]; evaluation
    runs at the configured 0.7; the metrics log records each step's rate (LoRA + class-attention
    too, which logged 1.0 before)."""
    seen = spy_rates(monkeypatch)
    train_run(config(folder, method=method, st_fields=fields, epochs=2, keep_rate_random=0.4, seed=3), tmp_path / "run")
    expected = [round(0.4 + 0.6 * torch.rand((), generator=torch.Generator().manual_seed(3 * 1_000_003 + step)).item(), 6)
                for step in range(6)]
    assert [rate for is_training, rate in seen if is_training] == expected
    assert len(set(expected)) == 6 and all(0.4 <= r <= 1 for r in expected)
    assert {rate for is_training, rate in seen if not is_training} == {0.7}
    logged = [l["keep_rate"] for l in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
              if "loss" in l and "split" not in l]
    assert [round(r, 6) for r in logged] == expected


def test_random_keep_rates_with_a_warmup_anneal_their_lower_bound(folder, tmp_path, monkeypatch):
    seen = spy_rates(monkeypatch)
    train_run(config(folder, epochs=2, keep_rate_random=0.4, keep_rate_warmup=2), tmp_path / "run")
    training = [rate for is_training, rate in seen if is_training]
    lows = [keep_rate_at(step, 6, 0.4) for step in range(6)]  # 1, 0.9, ..., 0.5
    assert training[0] == 1.0 and all(low - 1e-6 <= r <= 1 for r, low in zip(training, lows))


@pytest.mark.parametrize("extra", [dict(mixup=0.8, cutmix=1.0, label_smoothing=0.1), dict(amp="bf16"),
                                   dict(clip_grad=0.5)])
def test_recipe_options_take_effect(folder, tmp_path, extra):
    """Each option changes what a step computes against the same run without it (it is applied,
    not only accepted); bf16 stays within half precision's reach of fp32."""
    def step_losses(run, **options):
        train_run(config(folder, epochs=1, **options), tmp_path / run)
        return [l["loss"] for l in map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines())
                if "lr" in l]

    plain, changed = step_losses("plain"), step_losses("run", **extra)
    assert len(plain) == len(changed) == 3 and all(map(math.isfinite, changed))
    if "clip_grad" in extra:  # the first step's loss is before any update; clipping shows after it
        assert changed[0] == plain[0] and changed[1:] != plain[1:]
    else:
        assert changed[0] != plain[0]
    if "amp" in extra:
        assert all(abs(a - b) < 0.05 for a, b in zip(plain, changed))


@pytest.mark.parametrize("method", ["ts-only", "da-only"])
def test_other_methods_train_through_the_same_loop(folder, tmp_path, method):
    train_run(config(folder, method=method, epochs=1), tmp_path / "run")
    keys = set(trained_weights(tmp_path / "run"))
    assert any(".adapter." in k for k in keys) == (method == "da-only")


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(folder, tmp_path, monkeypatch):
    nan_loss_at(monkeypatch, 5)
    with pytest.raises(TrainingError, match=r"loss became nan at step 5.*step-0000003"):
        train_run(config(folder, epochs=2), tmp_path / "run")
    latest = json.loads((tmp_path / "run" / "checkpoints" / "latest.json").read_text())
    assert latest["step"] == 3  # the epoch-end checkpoint before the bad step


def test_nan_loss_before_any_checkpoint_says_what_a_resume_does(folder, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", lambda self, logits, target: logits.sum() * float("nan"))
    with pytest.raises(TrainingError) as stop:
        train_run(config(folder, epochs=2), tmp_path / "run")
    message = str(stop.value)
    assert "loss became nan at step 1" in message and "none" not in message
    assert f"no checkpoint was written yet, so a resume starts from the first step; continue with --resume " \
           f"{tmp_path / 'run'} and a lower --lr" in message


def test_resume_refuses_a_checkpoint_of_another_config(folder, tmp_path):
    cfg = config(folder, epochs=1, st_fields={"bottleneck": 4})
    train_run(cfg, tmp_path / "run")
    other = config(folder, epochs=2, st_fields={"bottleneck": 8})
    with pytest.raises(ValueError, match="another model or config"):
        train_run(other, tmp_path / "run", resume=True)


def test_a_run_from_before_an_option_existed_resumes(folder, tmp_path):
    """A checkpoint written before the distillation and random keep-rate options existed records
    none of them: they stood at their defaults then, and the run resumes (it used to be refused,
    'differs in train.distill_temperature (None then, 1.0 now)')."""
    train_run(config(folder, epochs=1), tmp_path / "run")
    latest = json.loads((tmp_path / "run" / "checkpoints" / "latest.json").read_text())
    path = tmp_path / "run" / "checkpoints" / latest["folder"] / "state.pt"
    state = torch.load(path, weights_only=True)
    record = json.loads(state["run_config"])
    for name in ("self_distill", "teacher", "teacher_weight", "distill_temperature", "keep_rate_random"):
        del record["train"][name]
    del record["choices"]
    state["run_config"] = json.dumps(record)
    torch.save(state, path)
    written = json.loads((tmp_path / "run" / "config.json").read_text())  # config.json of that time too
    for name in ("self_distill", "teacher", "teacher_weight", "distill_temperature", "keep_rate_random"):
        del written["train"][name]
    del written["choices"]
    (tmp_path / "run" / "config.json").write_text(json.dumps(written))
    assert train_run(resume_config(tmp_path / "run", epochs=2), tmp_path / "run", resume=True)["final"]["epoch"] == 1
    # an option that did change is still refused
    record["train"]["label_smoothing"] = 0.3
    state["run_config"] = json.dumps(record)
    torch.save(state, tmp_path / "run" / "checkpoints" / json.loads(
        (tmp_path / "run" / "checkpoints" / "latest.json").read_text())["folder"] / "state.pt")
    (tmp_path / "run" / "results.json").unlink()
    with pytest.raises(TrainingError, match="train.label_smoothing"):
        train_run(resume_config(tmp_path / "run", epochs=3), tmp_path / "run", resume=True)


def test_resume_ignores_a_half_written_checkpoint(folder, tmp_path):
    train_run(config(folder, epochs=1), tmp_path / "run")
    broken = tmp_path / "run" / "checkpoints" / "step-9999999"
    broken.mkdir()
    (broken / "trainable.safetensors").write_bytes(b"partial")
    results = train_run(resume_config(tmp_path / "run", epochs=2), tmp_path / "run", resume=True)
    assert results["final"]["epoch"] == 1


@pytest.mark.parametrize("classes,has_top5", [(3, False), (5, False), (6, True)])
def test_top5_only_for_more_than_five_classes(classes, has_top5):
    """With 5 classes or fewer top-5 is 100% by construction: it is not reported."""
    from torch.utils.data import TensorDataset

    from sparse_tuning.training.evaluate import evaluate

    torch.manual_seed(0)
    x, y = torch.randn(12, 4), torch.arange(12) % classes
    result = evaluate(torch.nn.Linear(4, classes), TensorDataset(x, y), batch_size=5)
    assert ("top5" in result) == has_top5 and result["images"] == 12
    if has_top5:
        assert 0 <= result["top5"] <= 100


def test_compiled_training_trains_as_the_eager_loop_does(folder, tmp_path):
    """--compile (aot_eager here: the captured graph, without code generation): the same adapters."""
    train_run(config(folder, epochs=1), tmp_path / "eager")
    train_run(config(folder, epochs=1, compile=True, compile_backend="aot_eager"), tmp_path / "compiled")
    a, b = trained_weights(tmp_path / "eager"), trained_weights(tmp_path / "compiled")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_tensorboard_and_csv_log_the_metrics_and_a_resume_writes_no_step_twice(folder, tmp_path, monkeypatch):
    """Read back with tensorboard's own event reader: every scalar of metrics.jsonl at its step
    (training steps as train/NAME, evaluations as val/NAME); and with the csv module, the same rows
    in csv/train.csv and csv/val.csv. The first attempt logs step 4 after its epoch-end checkpoint
    (step 3) and stops at a planted NaN in step 5; the resume writes steps 4-6 again, and each step
    appears once, with the resumed run's values."""
    import csv

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    real_ce = nan_loss_at(monkeypatch, 5)
    with pytest.raises(TrainingError, match="loss became nan at step 5"):
        train_run(config(folder, epochs=2, log="tensorboard,csv"), run)
    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", real_ce)
    train_run(resume_config(run), run, resume=True)
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [l for l in lines if "split" not in l]
    evals = [l for l in lines if l.get("split") == "val"]
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [l["step"] for l in steps] == list(range(1, 7))
    assert [e.value for e in loss] == pytest.approx([l["loss"] for l in steps], rel=1e-6)
    assert [e.value for e in acc.Scalars("train/keep_rate")] == pytest.approx([l["keep_rate"] for l in steps])
    assert [(e.step, e.value) for e in acc.Scalars("val/top1")] == [(l["step"], pytest.approx(l["top1"])) for l in evals]
    assert [e.value for e in acc.Scalars("val/epoch_s")] == pytest.approx([l["epoch_s"] for l in evals])
    assert all(l["epoch_s"] > 0 for l in evals)
    assert "config" in acc.Tags()["tensors"] or "config/text_summary" in acc.Tags()["tensors"]
    pictures = acc.Images("val/kept_tokens")  # the kept-token grid of 4 validation images at each evaluation
    reductions = len(load_run(run)[0].sparse_tuning.sparsify_at)
    assert [e.step for e in pictures] == [l["step"] for l in evals]
    assert (pictures[-1].height, pictures[-1].width) == (4 * 32, 32 * (reductions + 1))
    table = list(csv.DictReader(open(run / "csv" / "train.csv")))
    assert [int(r["step"]) for r in table] == list(range(1, 7))
    assert [float(r["loss"]) for r in table] == pytest.approx([l["loss"] for l in steps], rel=1e-9)
    evaluated = list(csv.DictReader(open(run / "csv" / "val.csv")))
    assert [(int(r["step"]), float(r["top1"])) for r in evaluated] == [(l["step"], pytest.approx(l["top1"])) for l in evals]


def wandb_history(run_dir):
    """Every history record (step, {key: value}) of a W&B offline run folder, read from its
    .wandb files here: the log format W&B writes (LevelDB's: 32 KiB blocks of records, each a
    CRC, a length, a type, then a chunk of a protobuf Record), for want of a public reader."""
    import glob

    from wandb.proto import wandb_internal_pb2 as pb

    out = []
    for path in sorted(glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))):
        data, pos, pending = open(path, "rb").read(), 7, b""  # 7: ":W&B", its magic and version
        while pos + 7 <= len(data):
            if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
                pos += 32768 - pos % 32768
                continue
            length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
            chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
            if kind in (1, 4):  # a whole record, or the last chunk of one
                record = pb.Record()
                record.ParseFromString(pending + chunk)
                pending = b""
                if record.WhichOneof("record_type") == "history":
                    items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                    out.append((record.history.step.num, items))
            elif kind in (2, 3):
                pending += chunk
    return out


def test_wandb_offline_logs_the_metrics_and_a_resume_sends_no_step_twice(folder, tmp_path, monkeypatch):
    """Read back from the offline run folder: the same W&B run id across the resume, every
    training step's loss and every evaluation's top-1 once, at its step."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    real_ce = nan_loss_at(monkeypatch, 5)
    with pytest.raises(TrainingError, match="loss became nan at step 5"):
        train_run(config(folder, epochs=2, log="wandb"), run)
    run_id = (run / "wandb_run_id").read_text()
    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", real_ce)
    train_run(resume_config(run), run, resume=True)
    assert (run / "wandb_run_id").read_text() == run_id
    assert all(p.name.endswith(run_id.strip()) for p in (run / "wandb").glob("offline-run-*"))
    history = wandb_history(run)
    losses = [(step, items["train/loss"]) for step, items in history if "train/loss" in items]
    assert [s for s, _ in losses] == list(range(1, 7))  # each step once, across the two attempts
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [l for l in lines if l.get("split") == "val"]
    assert [(s, items["val/top1"]) for s, items in history if "val/top1" in items] == [
        (l["step"], pytest.approx(l["top1"])) for l in evals]


def test_an_unknown_logger_is_refused_by_name(folder):
    with pytest.raises(ValueError, match="'mlflow' is not a logger; expected a comma-separated subset of tensorboard, "
                                         "csv, wandb"):
        config(folder, log="tensorboard,mlflow")
