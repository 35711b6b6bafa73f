"""Video: decoding and sampling of small synthetic videos, the two token layouts, multi-view
testing, kept (time, patch) positions, and a few training steps in each layout."""
import json
import random

import numpy as np
import pytest
import timm
import torch
from data_files import make_video_root, moving_square_frames, write_frame_folder, write_mp4
from torch.utils.data import DataLoader

import sparse_tuning as st
from sparse_tuning.cli import main
from sparse_tuning.data.images import DataError, collate_skipping
from sparse_tuning.hosts.timm_video import VideoViT, kept_positions
from sparse_tuning.data.video import (TooShortError, ClipPlan, frame_count, load_video_data, read_frames,
                                      sample_indices)

pytest.importorskip("av")


def bar(frame):
    return int(np.argmax(frame[-2, :, 0] > 128))


@pytest.mark.parametrize("kind", ["mp4", "folder"])
def test_reads_exactly_the_frames_asked_for(tmp_path, kind):
    frames = moving_square_frames(40)
    path = write_mp4(tmp_path / "v.mp4", frames) if kind == "mp4" else write_frame_folder(tmp_path / "v", frames)
    assert frame_count(path) == 40
    got = read_frames(path, [30, 0, 5, 39, 5])
    assert got.shape == (5, 32, 32, 3)
    assert [bar(f) for f in got] == [(3 * i) % 32 for i in (30, 0, 5, 39, 5)]


def test_dense_and_segment_sampling():
    dense = ClipPlan(frames=8, rate=4)
    random.seed(0)
    for _ in range(20):
        idx = sample_indices(100, dense)
        assert np.all(np.diff(idx) == 4) and 0 <= idx[0] and idx[-1] < 100
    views = [sample_indices(100, dense, c, 5) for c in range(5)]
    assert views[0][0] == 0 and views[-1][-1] == 99 and len({v[0] for v in views}) == 5
    assert sample_indices(20, dense) == [round(i * 19 / 7) for i in range(8)]   # too few for rate 4: spread
    seg = ClipPlan(frames=4, sampling="segment")
    assert sample_indices(40, seg, 0, 1) == [5, 15, 25, 35]                     # middle of each segment
    for _ in range(20):
        idx = sample_indices(40, seg)
        assert all(10 * i <= j < 10 * (i + 1) for i, j in enumerate(idx))
    with pytest.raises(TooShortError, match="5 frames, fewer than the"):
        sample_indices(5, dense)


def test_dataset_items_and_skipped_videos(tmp_path):
    root = make_video_root(tmp_path / "k400", per_class=2)
    (root / "videos" / "broken.mp4").write_bytes(b"not a video")
    write_mp4(root / "videos" / "short.mp4", moving_square_frames(3))
    (root / "train.csv").write_text((root / "train.csv").read_text() + "videos/broken.mp4 0\nvideos/short.mp4 1\n")
    opts = ClipPlan(frames=4, rate=2, test_clips=2, test_crops=3, size=32)
    data = load_video_data("kinetics", str(root), opts)
    assert data.num_classes == 2 and len(data.train) == 6
    clip, label = data.train[0]
    assert clip.shape == (3, 4, 32, 32) and label == 0
    views, _ = data.eval[0]
    assert views.shape == (6, 3, 4, 32, 32)
    batches = list(DataLoader(data.train, batch_size=3, collate_fn=collate_skipping))
    assert sum(b[2] for b in batches) == 2 and sum(len(b[1]) for b in batches) == 4
    strict = load_video_data("kinetics", str(root), opts, strict=True)
    with pytest.raises(DataError, match="broken.mp4"):
        strict.train[4]


def test_missing_videos_and_bad_lines(tmp_path):
    root = make_video_root(tmp_path / "r", per_class=1)
    (root / "val.csv").write_text("videos/nope.mp4 0\n")
    with pytest.raises(DataError, match="missing file"):
        load_video_data("kinetics", str(root), ClipPlan())
    (root / "val.csv").write_text("videos/train_0_0.mp4\n")
    with pytest.raises(DataError, match="expected '<video path> <label>'"):
        load_video_data("kinetics", str(root), ClipPlan())


def micro(**kw):
    torch.manual_seed(0)
    return timm.create_model("st_vit_micro_patch4_32", num_classes=3, **kw).eval()


def test_static_video_embeds_like_its_image():
    vit = micro()
    img = torch.randn(2, 3, 32, 32)
    video = VideoViT(vit, frames=4, layout="joint", tubelet=2)
    tokens = video.embed(img.unsqueeze(2).repeat(1, 1, 4, 1, 1))
    image_tokens = vit._pos_embed(vit.patch_embed(img))
    assert tokens.shape == (2, 1 + 2 * 64, 64)
    assert torch.allclose(tokens[:, :1], image_tokens[:, :1])
    for t in range(2):  # the temporal embedding starts at zero
        assert torch.allclose(tokens[:, 1 + 64 * t:1 + 64 * (t + 1)], image_tokens[:, 1:], atol=1e-5)


def test_kept_positions_span_time_and_space():
    vit = st.apply(micro())
    video = VideoViT(vit, frames=8, layout="joint", tubelet=2)
    video(torch.randn(2, 3, 8, 32, 32))
    kept = kept_positions(video)
    assert [k.shape for k in kept] == [(2, 180, 2), (2, 127, 2), (2, 90, 2)]  # ceil(0.7 * 256), ...
    first = kept[0]
    assert first[..., 0].min() >= 0 and first[..., 0].max() <= 3 and first[..., 1].max() < 64
    assert len(set(first[0, :, 0].tolist())) > 1  # tokens are kept from several time steps
    assert (kept[1] == -1).all(dim=-1).any()      # the fused token of step 1 is kept as (-1, -1)


def test_multi_view_logits_are_averaged_and_frames_layout_averages_features():
    vit = st.apply(micro())
    video = VideoViT(vit, frames=4, layout="joint").eval()
    views = torch.randn(2, 3, 3, 4, 32, 32)
    with torch.no_grad():
        expected = torch.stack([video(views[:, v]) for v in range(3)]).mean(0)
        assert torch.allclose(video(views), expected, atol=1e-5)
        frames = VideoViT(vit, frames=4, layout="frames").eval()
        clip = views[:, 0]
        feats = torch.stack([vit.forward_head(vit.forward_features(clip[:, :, t]), pre_logits=True) for t in range(4)])
        assert torch.allclose(frames(clip), vit.head(feats.mean(0)), atol=1e-5)


@pytest.mark.parametrize("layout,kind,spec", [("joint", "mp4", "kinetics"), ("frames", "folder", "frames"),
                                              ("joint", "mp4", "ssv2")])
def test_trains_in_each_layout(tmp_path, layout, kind, spec, capsys):
    root = make_video_root(tmp_path / "data", kind=kind, per_class=2)
    out = tmp_path / "run"
    assert main(["train", "--model", "st_vit_micro_patch4_32", "--no-pretrained", "--data", f"{spec}:{root}",
                 "--out", str(out), "--frames", "4", "--video-tokens", layout, "--sampling-rate", "2",
                 "--test-clips", "2", "--test-crops", "1", "--epochs", "2", "--batch-size", "2",
                 "--num-workers", "0"]) == 0
    flipped = ", flipped at random" if spec != "ssv2" else ""  # a flip changes SSv2's "left" and "right"
    assert f"augmentation: the video recipe (a random clip and crop{flipped})\n" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["final"]["images"] == 4
    names = set(json.loads((out / "config.json").read_text())["video"])
    assert {"frames", "video_tokens", "tubelet"} <= names
    assert main(["eval", "--run", str(out), "--keep-rate", "0.5"]) == 0


def test_video_flops_cli(capsys):
    assert main(["flops", "--model", "vit_base_patch16_224", "--frames", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert round(out["dense_gflops"], 2) == 79.03 and round(out["gflops"], 2) == 51.19
    assert main(["train", "--model", "st_vit_micro_patch4_32", "--data", "kinetics:/nowhere", "--out", "x"]) == 2
    assert "--frames" in capsys.readouterr().err


@pytest.mark.parametrize("method,rule", [("adapter", {}), ("vpt", {}), ("adapter", {"reduction": "tome", "tome_r": (4,)}),
                                         ("vpt", {"reduction": "class-attention"})])
def test_comparison_methods_run_on_video_with_or_without_a_reduction(method, rule):
    """A clip of one repeated image in the frames layout is that image to the method's model;
    the joint layout trains (a gradient reaches the method's own weights)."""
    from sparse_tuning.methods import method_config, prepare

    vit = prepare(micro(), method, method_config(method, 0.5 if rule.get("reduction") == "class-attention" else None,
                                                 **rule))
    with torch.no_grad():
        for p in vit.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        frames = VideoViT(vit, frames=4, layout="frames").eval()
        assert torch.allclose(frames(img.unsqueeze(2).repeat(1, 1, 4, 1, 1)), vit(img), atol=1e-5)
    joint = VideoViT(vit, frames=4, layout="joint").train()
    joint(torch.randn(2, 3, 4, 32, 32)).sum().backward()
    own = [p for n, p in vit.named_parameters() if p.requires_grad and not n.startswith("head.")]
    assert own and all(p.grad is not None and p.grad.abs().sum() > 0 for p in own)
