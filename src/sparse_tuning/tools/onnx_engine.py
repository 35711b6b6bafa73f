"""ONNX Runtime as an engine: an exported file that stands alone (its classes, keep rate and
preprocessing in its metadata), int8 quantization of its matrix products, and the file run as a
torch module, so that ``eval``, ``predict`` and ``bench`` use it like a trained run's model.

Quantization is onnxruntime's own (``onnxruntime.quantization``): dynamic by default, int8
weights with activations quantized per batch at run time, on the MatMul and Gemm nodes that hold
nearly all of a ViT's multiply-adds. Static quantization (activation ranges calibrated once on
images of the run's data) is ``quantize="int8-static"``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from ..errors import UserError
from ..files import atomic_path

FORMAT = "sparse-tuning-onnx/1"
QUANTIZE = ("int8", "int8-static")
# metadata keys; each value is JSON
KEYS = ("format", "model", "method", "task", "classes", "keep_rate", "reduction", "preprocessing", "quantized")


def eval_preprocessing(data_config: dict[str, Any], augment_mode: str) -> dict[str, Any]:
    """The evaluation preprocessing a run's model reads, resolved: the backbone's data config,
    with the VTAB-style squash resize where the run was trained without augmentation."""
    out = {k: data_config[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")}
    if augment_mode == "vtab":
        out.update(crop_pct=1.0, crop_mode="squash")
    out["input_size"] = list(out["input_size"])
    out["mean"], out["std"] = list(out["mean"]), list(out["std"])
    return out


def write_metadata(path: str | Path, metadata: dict[str, Any]) -> None:
    """Add ``metadata`` (JSON values) to the ONNX file's metadata_props, in place, atomically."""
    import onnx

    model = onnx.load(str(path), load_external_data=True)
    del model.metadata_props[:]
    for key, value in {"format": FORMAT, **metadata}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f"sparse_tuning.{key}", json.dumps(value)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


def read_metadata(session) -> dict[str, Any]:
    raw = session.get_modelmeta().custom_metadata_map
    return {k.split(".", 1)[1]: json.loads(v) for k, v in raw.items() if k.startswith("sparse_tuning.")}


def quantize(source: str | Path, out: str | Path, mode: str = "int8", calibration: Optional[torch.Tensor] = None) -> Path:
    """An int8 copy of an exported fp32 file (its metadata kept, ``quantized`` set)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if mode not in QUANTIZE:
        raise UserError(f"quantize={mode!r}: expected one of {', '.join(QUANTIZE)}")
    out = Path(out)
    kept = {p.key: p.value for p in onnx.load(str(source), load_external_data=False).metadata_props}
    with atomic_path(out) as tmp:
        if mode == "int8":
            quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
        else:
            if calibration is None:
                raise UserError("int8-static calibrates on images: give calibration (a batch of the run's images)")
            _quantize_static(source, tmp, calibration)
    meta = {k.split(".", 1)[1]: json.loads(v) for k, v in kept.items() if k.startswith("sparse_tuning.")}
    meta.pop("format", None)
    write_metadata(out, {**meta, "quantized": mode})
    return out


def _quantize_static(source: Path, out: Path, calibration: torch.Tensor) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"images": calibration[i:i + 8].numpy()} for i in range(0, len(calibration), 8)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(source), str(out), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])


class OnnxModel(nn.Module):
    """An exported file run by ONNX Runtime on the CPU, called like the torch model it came from
    (images in, logits out); ``metadata`` holds what export recorded."""

    def __init__(self, path: str | Path, threads: Optional[int] = None) -> None:
        super().__init__()
        from ..extras import require_extra

        require_extra("export", "an .onnx model file")
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for a damaged or foreign file
            raise UserError(f"{path} cannot be read as an ONNX model ({' '.join(str(e).split())[:200]})") from None
        self.path, self.metadata = path, read_metadata(self.session)
        self.input = self.session.get_inputs()[0]

    @property
    def classes(self) -> list[str]:
        return list(self.metadata.get("classes") or [])

    def check_input(self, x: torch.Tensor) -> None:
        expected = [d if isinstance(d, int) else None for d in self.input.shape]
        if x.ndim != len(expected) or any(e is not None and e != s for e, s in zip(expected[1:], x.shape[1:])):
            shape = "x".join(str(d) if d is not None else "B" for d in expected)
            raise UserError(f"{self.path} takes images of {shape}, got {'x'.join(map(str, x.shape))}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        out = self.session.run(None, {self.input.name: x.detach().cpu().float().contiguous().numpy()})[0]
        return torch.from_numpy(out)


# --- a file in place of a run folder (eval --model-file, predict --model-file) -------------------

def _data_of(model: OnnxModel, spec: str):
    """The evaluation images of ``spec`` as the file's recorded preprocessing reads them."""
    pre = model.metadata.get("preprocessing")
    if pre is None:
        raise UserError(f"{model.path} records no preprocessing: export it with sparse-tuning export --format onnx")
    from ..data.options import DENSE_KINDS

    kind, _, path = spec.partition(":")
    if (kind in DENSE_KINDS) != (model.metadata.get("task") == "segment"):
        raise UserError(f"{model.path} {'segments' if kind not in DENSE_KINDS else 'classifies'}; --data {spec} is "
                        f"{'segmentation data' if kind in DENSE_KINDS else 'not seg: data'}")
    if model.metadata.get("task") == "segment":
        from ..data.segmentation import load_segmentation_data

        return load_segmentation_data(path, tuple(pre["input_size"][1:]), pre["mean"], pre["std"])
    from ..data.images import load_image_data

    # "crop": the eval transform of the recorded crop_pct / crop_mode (squash for a VTAB-style run)
    return load_image_data(spec, pre, augment="crop", eval_only=True)


def eval_file(path: str | Path, data: str, batch_size: int = 64, threads: Optional[int] = None) -> dict[str, Any]:
    """A model file's accuracy (top-1/top-5, or mIoU) on ``data``, as ``eval`` gives a run's; the
    data's classes checked against the file's."""
    from ..training.tasks import get_task

    model = OnnxModel(path, threads)
    images = _data_of(model, data)
    if model.classes and list(images.classes) != model.classes:
        raise UserError(f"the data's classes ({', '.join(images.classes[:3])}, ...) are not the file's "
                        f"({', '.join(model.classes[:3])}, ...)")
    task = get_task(model.metadata.get("task", "classify"))
    result = task.evaluate(model, images.eval, batch_size, "cpu", num_classes=len(images.classes))
    return {**result, "split": images.eval_split, "task": task.name, "keep_rate": model.metadata.get("keep_rate"),
            "quantized": model.metadata.get("quantized", "none"), "file": str(path), "data": data}


def predict_file(path: str | Path, images: list[str], top_k: int = 5, masks: Optional[str | Path] = None,
                 threads: Optional[int] = None) -> list[dict[str, Any]]:
    """predict with a model file: top-k labels, or (a segmentation file) masks written to ``masks``."""
    from ..data.images import make_transforms, user_image_paths
    from ..training.run import top_k_predictions

    paths = user_image_paths(images)
    model = OnnxModel(path, threads)
    pre = model.metadata.get("preprocessing")
    if pre is None or not model.classes:
        raise UserError(f"{path} records no classes or preprocessing: export it with sparse-tuning export --format onnx")
    if (model.metadata.get("task") == "segment") != (masks is not None):
        raise UserError(f"{path} segments: give --masks DIR" if masks is None else
                        "--masks DIR is for segmentation models; this file classifies")
    if masks is not None:
        from ..data.segmentation import SegmentationDataset
        from ..training.segmentation import predict_masks

        reader = SegmentationDataset([], tuple(pre["input_size"][1:]), pre["mean"], pre["std"])
        return predict_masks(model, paths, reader.image, model.classes, masks)
    _, transform = make_transforms(pre, "crop")
    return top_k_predictions(model, transform, paths, model.classes, top_k)


def quantization_check(run_dir: str | Path, path: str | Path, samples: int = 500,
                       keep_rate: Optional[float] = None) -> str:
    """The quantized file against the run's own fp32 model on the same ``samples`` evaluation
    images (drawn with seed 0): the line export prints."""
    from ..training.run import load_eval_data, load_run
    from ..training.tasks import get_task

    from ..data.images import DataError

    model, cfg = load_run(run_dir, keep_rate)
    try:
        data = load_eval_data(model, cfg)
    except (DataError, FileNotFoundError) as e:  # the file is written: the check alone cannot run here
        return f"check skipped: the run's evaluation data cannot be read here ({e})"
    picked = torch.randperm(len(data.eval), generator=torch.Generator().manual_seed(0))[:samples].tolist()
    subset = torch.utils.data.Subset(data.eval, sorted(picked))
    task = get_task(cfg.task)
    torch.manual_seed(cfg.train.seed)  # the random rule's draws, as eval makes them
    fp32 = task.evaluate(model, subset, 32, "cpu", num_classes=cfg.num_classes)
    quantized = OnnxModel(path)
    int8 = task.evaluate(quantized, subset, 32, "cpu", num_classes=cfg.num_classes)
    key, label = task.primary, task.primary_label
    return (f"check on {int8['images']} {data.eval_split} images: {label} {int8[key]:.2f} "
            f"({quantized.metadata.get('quantized')}, onnxruntime) vs {fp32[key]:.2f} (fp32, the run's model): "
            f"{int8[key] - fp32[key]:+.2f}")
