"""Semantic segmentation end to end (``train --task segment``, ``eval``, ``predict --masks``) on a
tiny ViT and a folder of coloured squares written here: every method and every reduction trains,
the recorded metrics are the ones recomputed from the saved model, and a user's mistake is one
line before any work."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from sparse_tuning.cli import main
from sparse_tuning.core.reduction import rule_names
from sparse_tuning.data.segmentation import IGNORE_INDEX
from sparse_tuning.methods import method_names
from sparse_tuning.training.config import resolve_config
from sparse_tuning.training.run import eval_run, load_run, predict_run, train_run
from sparse_tuning.training.segmentation import confusion_matrix, segmentation_metrics

MODEL = "st_vit_micro_patch4_32"
COLOURS = {1: (230, 40, 40), 2: (40, 40, 230)}  # class 1 red, class 2 blue, 0 the grey background


def make_squares(root, per_split=(12, 6), size=24, seed=0):
    """{train,val}/{images,masks}: a red or blue square on grey, its pixels labelled by colour,
    a one-pixel ignored rim around it; classes.txt names the classes."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "val"), per_split):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(n):
            pixels = np.full((size, size, 3), 128, dtype=np.uint8)
            labels = np.zeros((size, size), dtype=np.uint8)
            cls = 1 + i % 2
            side = int(rng.integers(8, 14))
            y, x = rng.integers(0, size - side, 2)
            labels[max(y - 1, 0):y + side + 1, max(x - 1, 0):x + side + 1] = IGNORE_INDEX
            labels[y:y + side, x:x + side] = cls
            pixels[y:y + side, x:x + side] = COLOURS[cls]
            Image.fromarray(pixels).save(root / split / "images" / f"{i}.png")
            Image.fromarray(labels, mode="L").save(root / split / "masks" / f"{i}.png")
    (root / "classes.txt").write_text("background\nred\nblue\n")
    return root


@pytest.fixture(scope="module")
def squares(tmp_path_factory):
    return make_squares(tmp_path_factory.mktemp("squares") / "seg")


def config(data, **options):
    return resolve_config({"model": MODEL, "pretrained": False, "data": f"seg:{data}", "epochs": 1, "batch_size": 4,
                           "num_workers": 0, "device": "cpu", "eval_batch_size": 4, **options})


def recomputed(model, dataset):
    """mIoU and pixel accuracy from the model's own argmax over the dataset, counted here."""
    total = torch.zeros(3, 3, dtype=torch.long)
    with torch.no_grad():
        for i in range(len(dataset)):
            image, mask = dataset[i]
            total += confusion_matrix(model(image[None]).argmax(1)[0], mask, 3)
    return segmentation_metrics(total)


def test_a_segmentation_run_records_miou_and_eval_recomputes_it(squares, tmp_path, capsys):
    """seg: data makes the task segment by itself; results.json holds final.miou and the per-class
    IoU, which the saved model reproduces; eval prints them with the table; predict writes masks at
    each image's own size whose pixel values are the classes."""
    run = tmp_path / "run"
    assert main(["train", "--model", MODEL, "--no-pretrained", "--data", f"seg:{squares}", "--epochs", "2",
                 "--batch-size", "4", "--num-workers", "0", "--device", "cpu", "--keep-rate", "0.5",
                 "--out", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "top-1" not in printed
    recorded = json.loads((run / "config.json").read_text())
    results = json.loads((run / "results.json").read_text())
    assert recorded["task"] == "segment" and recorded["augment"] == "none" and recorded["classes"] == [
        "background", "red", "blue"]
    assert results["task"] == "segment" and set(results["best"]) == {"miou", "epoch"}
    final = results["final"]
    assert {"miou", "pixel_accuracy", "iou", "loss", "images"} <= set(final) and len(final["iou"]) == 3

    model, cfg = load_run(run)
    from sparse_tuning.data.segmentation import load_segmentation_data

    data = load_segmentation_data(squares, (32, 32), (0.5,) * 3, (0.5,) * 3)
    again = recomputed(model, data.eval)
    assert final["miou"] == pytest.approx(again["miou"], abs=1e-9)
    assert final["pixel_accuracy"] == pytest.approx(again["pixel_accuracy"], abs=1e-9)

    assert main(["eval", "--run", str(run), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert f"mIoU {final['miou']:.2f}" in printed and "| red |" in printed and "| class | IoU (%) |" in printed

    masks = tmp_path / "masks"
    image = squares / "val" / "images" / "0.png"
    Image.open(image).resize((40, 30)).save(tmp_path / "wide.png")
    assert main(["predict", "--run", str(run), "--device", "cpu", "--masks", str(masks), str(image),
                 str(tmp_path / "wide.png")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [o["mask"] for o in out] == [str(masks / "0.png"), str(masks / "wide.png")]
    written = Image.open(masks / "wide.png")
    assert written.mode == "P" and written.size == (40, 30)
    labels = np.array(written)
    assert labels.max() < 3 and sum(out[1]["classes"].values()) == pytest.approx(100, abs=0.1)


ROWS = [(m, "none") for m in method_names()] + [("sparse-tuning", r) for r in rule_names() if r != "none"] \
    + [("lora", "class-attention"), ("adaptformer", "tome")]


@pytest.mark.parametrize("method, rule", ROWS)
def test_every_method_and_reduction_trains_a_segmentation_head(squares, tmp_path, method, rule):
    """One epoch of each: the head and what the method declares trainable move, the frozen
    backbone does not, and the evaluation is a real mIoU."""
    from sparse_tuning.methods import get_method

    options = {"method": method}
    if get_method(method).reduction != "none" or rule != "none":
        options["reduction"] = rule
    if rule == "tome":
        options["tome_r"] = [2]
    cfg = config(squares, **options)
    results = train_run(cfg, tmp_path / "run", log=lambda line: None)
    assert 0 <= results["final"]["miou"] <= 100
    model, _ = load_run(tmp_path / "run")
    untrained = __import__("sparse_tuning.training.run", fromlist=["build_model"]).build_model(cfg, 3)
    before, after = dict(untrained.named_parameters()), dict(model.named_parameters())
    moved = {n for n, p in after.items() if not torch.equal(p, before[n])}
    trainable = {n for n, p in after.items() if p.requires_grad}
    assert "head.weight" in moved and moved <= trainable
    assert all(n.startswith("backbone.") for n in trainable - {"head.weight", "head.bias"})


@pytest.mark.parametrize("options, message", [
    ({"task": "classify"}, "seg: data holds masks for --task segment"),
    ({"mixup": 0.2}, "mixup is for classification"),
    ({"self_distill": 1.0, "keep_rate": 0.5}, "self_distill is for classification"),
    ({"augment": "crop-flip"}, "moves pixels without their mask"),
])
def test_what_segmentation_cannot_take_is_one_line(squares, options, message):
    with pytest.raises(ValueError, match=message):
        config(squares, **options)


def test_segment_needs_seg_data_and_head_blocks_need_segment(tmp_path):
    with pytest.raises(ValueError, match="--task segment reads seg:ROOT"):
        resolve_config({"model": MODEL, "data": f"folder:{tmp_path}", "task": "segment"})
    with pytest.raises(ValueError, match="head_blocks is the segmentation head.s; it goes with --task segment"):
        resolve_config({"model": MODEL, "data": f"folder:{tmp_path}", "head_blocks": [1]})


def test_head_blocks_read_several_blocks_and_a_wrong_one_is_refused_before_any_file(squares, tmp_path, capsys):
    results = train_run(config(squares, head_blocks=(2, -1)), tmp_path / "run", log=lambda line: None)
    assert results["final"]["images"] == 6
    model, cfg = load_run(tmp_path / "run")
    assert cfg.head_blocks == (2, -1) and model.blocks == (2, 11) and model.head.in_channels == 2 * 64
    code = main(["train", "--model", MODEL, "--no-pretrained", "--data", f"seg:{squares}", "--head-blocks", "12",
                 "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "bad")])
    assert code == 2 and "head block 12: the model has 12 blocks" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_predict_asks_for_masks_on_a_segmentation_run_only(squares, tmp_path):
    train_run(config(squares), tmp_path / "run", log=lambda line: None)
    image = str(squares / "val" / "images" / "0.png")
    with pytest.raises(ValueError, match="give --masks DIR"):
        predict_run(tmp_path / "run", [image])
    assert eval_run(tmp_path / "run", write=False)["task"] == "segment"


def test_a_segmentation_run_resumes_with_more_epochs(squares, tmp_path):
    """Its recorded config (the task, the head's blocks as a JSON list) compares equal to the
    checkpoint's, and the best epoch is chosen on mIoU across both attempts."""
    from sparse_tuning.training.run import resume_config

    train_run(config(squares, head_blocks=(-1,)), tmp_path / "run", log=lambda line: None)
    results = train_run(resume_config(tmp_path / "run", epochs=2), tmp_path / "run", resume=True,
                        log=lambda line: None)
    assert results["final"]["epoch"] == 1 and results["best"]["epoch"] in (0, 1)
    evaluations = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
                   if '"split"' in line]
    assert [e["epoch"] for e in evaluations] == [0, 1]
    assert results["best"]["miou"] == max(e["miou"] for e in evaluations)


@pytest.mark.parametrize("method", ["dense", "sparse-tuning"])
def test_flops_count_the_segmentation_head(method):
    """The head's 1x1 convolution is in the count: 45 more classes add width x 45 x the 8x8 grid
    multiply-adds and nothing else; parameters grow by its weights and biases."""
    from sparse_tuning.tools.flops import model_cost

    few, many = (model_cost(MODEL, method, num_classes=k, task="segment") for k in (5, 50))
    assert (many["gflops"] - few["gflops"]) * 1e9 == pytest.approx(64 * 45 * 8 * 8, abs=1e-3)
    assert many["params_total"] - few["params_total"] == 45 * (64 + 1)
    with pytest.raises(ValueError, match="--num-classes"):
        model_cost(MODEL, method, task="segment")


@pytest.mark.parametrize("scale, expected", [(None, 10.0), (3.0, 3.0)])
def test_the_head_learns_at_its_multiple_of_the_learning_rate(squares, tmp_path, scale, expected):
    """The decoder's parameter groups follow the schedule at head_lr_scale times it (10 by default
    for segmentation), the adapters' at the schedule itself; a classification run has no such group."""
    from sparse_tuning.data.images import worker_batches
    from sparse_tuning.methods import get_method
    from sparse_tuning.training.loop import Trainer
    from sparse_tuning.training.run import build_model, load_data
    from sparse_tuning.training.tasks import get_task

    cfg = config(squares, **({} if scale is None else {"head_lr_scale": scale}))
    model = build_model(cfg, 3)
    data = load_data(cfg, model.backbone)
    trainer = Trainer(model, data, cfg.train, tmp_path / "run", hook=get_method(cfg.method).train_hook,
                      task=get_task("segment"), log=lambda line: None)
    loader, _ = trainer.loader(0)
    with worker_batches(loader) as batches:
        _, lr, _ = trainer.step(batches)
    head = {id(p) for p in model.head.parameters()}
    for group in trainer.optimizer.param_groups:
        is_head = any(id(p) in head for p in group["params"])
        assert group["lr"] == pytest.approx(lr * (expected if is_head else 1.0))
    assert sum(len(g["params"]) for g in trainer.optimizer.param_groups if "lr_scale" in g) == 2


def test_a_transformers_vit_segments_too(squares, tmp_path, capsys):
    """hf:DIR with seg: data: the same head on its restored hidden states; trained, evaluated and
    predicting masks through the CLI."""
    from test_hf_host import hf_vit

    hf_vit(depth=4).save_pretrained(tmp_path / "vit")
    run = tmp_path / "run"
    assert main(["train", "--model", f"hf:{tmp_path / 'vit'}", "--data", f"seg:{squares}", "--epochs", "1",
                 "--batch-size", "4", "--num-workers", "0", "--device", "cpu", "--keep-rate", "0.5",
                 "--out", str(run)]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["task"] == "segment" and 0 <= results["final"]["miou"] <= 100
    model, _ = load_run(run)  # no classifier built beside the segmentation head: nothing unused trains
    assert not [n for n, p in model.named_parameters() if p.requires_grad and "classifier" in n]
    image = str(squares / "val" / "images" / "1.png")
    assert main(["predict", "--run", str(run), "--masks", str(tmp_path / "m"), image]) == 0
    assert Image.open(tmp_path / "m" / "1.png").size == (24, 24)


def test_the_voc_layout_trains_evaluates_and_predicts(tmp_path, capsys):
    """seg:ROOT in PASCAL VOC's layout (palette masks, 255 borders, ImageSets lists): VOC's 21
    classes, the border left out of the metrics, masks written at the photo's size."""
    from test_segmentation_data import make_voc

    root = make_voc(tmp_path / "voc", names=("a", "b", "c", "d", "e"))
    run = tmp_path / "run"
    assert main(["train", "--model", MODEL, "--no-pretrained", "--data", f"seg:{root}", "--epochs", "1",
                 "--batch-size", "2", "--num-workers", "0", "--device", "cpu", "--out", str(run)]) == 0
    results = json.loads((run / "results.json").read_text())
    assert len(results["final"]["iou"]) == 21 and results["final"]["images"] == 1
    assert main(["eval", "--run", str(run), "--device", "cpu"]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 21 and table[1].startswith("| background |") and table[-1].startswith("| tvmonitor |")
    assert main(["predict", "--run", str(run), "--masks", str(tmp_path / "m"), str(root / "JPEGImages" / "e.jpg")]) == 0
    assert Image.open(tmp_path / "m" / "e.png").size == (20, 16)


def test_sweep_refuses_a_segmentation_run_and_eval_takes_its_keep_rate(squares, tmp_path, capsys):
    train_run(config(squares, keep_rate=0.5), tmp_path / "run", log=lambda line: None)
    assert main(["sweep", "--run", str(tmp_path / "run"), "--keep-rates", "0.5,1.0"]) == 2
    assert "eval --run RUN --keep-rate R" in capsys.readouterr().err
    reduced, full = (eval_run(tmp_path / "run", keep_rate=k, write=False) for k in (0.5, 1.0))
    assert reduced["keep_rate"] == 0.5 and full["keep_rate"] == 1.0


def test_a_run_on_a_subset_evaluates_with_its_own_classes_and_refuses_other_data(tmp_path, capsys):
    """The classes come from every mask before the subset is drawn, and eval reads the val split
    alone against the run's classes; classification data, or a safetensors model file, is refused
    in one line."""
    root = make_squares(tmp_path / "seg", per_split=(8, 3))
    (root / "classes.txt").unlink()  # numbered from the masks: all of them, not the subset's
    run = tmp_path / "run"
    train_run(config(root, train_samples=4), run, log=lambda line: None)  # 4 of 8: classes 1 and 2 only, or fewer
    assert json.loads((run / "config.json").read_text())["classes"] == ["0", "1", "2"]
    import shutil

    shutil.rmtree(root / "train")  # evaluation needs the val split only
    assert eval_run(run, write=False)["images"] == 3
    assert main(["eval", "--run", str(run), "--data", f"folder:{tmp_path}"]) == 2
    assert "the run segments; --data" in capsys.readouterr().err
    assert main(["export", "--run", str(run), "--format", "safetensors", "--out", str(tmp_path / "m.st")]) == 2
    assert "a segmentation run exports as onnx" in capsys.readouterr().err
