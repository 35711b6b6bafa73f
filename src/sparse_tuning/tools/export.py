"""Deployment formats of a trained run: ONNX, TorchScript, torch.export, and one safetensors file.

Token counts depend only on the input size, so every graph is static but for the batch
dimension, which stays dynamic.
"""
from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save

from ..api import set_keep_rate
from ..errors import UserError
from ..extras import require_extra
from ..files import atomic_files, atomic_path, atomic_write_bytes
from ..hosts import build_architecture, host_for, logits_of
from ..methods import get_method, prepare
from ..training.config import RunConfig
from .options import EXPORT_FORMATS as FORMATS
MODEL_FORMAT = "sparse-tuning-model/1"


def example_input(model: nn.Module, batch: int = 2) -> torch.Tensor:
    from ..training.tasks import backbone_of

    backbone = backbone_of(model)  # a segmentation model reads what its backbone reads
    return torch.randn(batch, *host_for(backbone).input_size(backbone))


def for_inference(model: nn.Module, method: str) -> nn.Module:
    """The model as it is deployed: the method's inference form (LoRA merged), eval mode, CPU."""
    model = model.cpu().eval()
    hook = get_method(method).for_inference
    return hook(model) if hook is not None else model


def check_format(fmt: str) -> None:
    """An export format this installation can write (ONNX needs the export extra)."""
    if fmt not in FORMATS:
        raise UserError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        require_extra("export", "--format onnx")


def export_model(model: nn.Module, run_config: RunConfig, fmt: str, out: str | Path) -> Path:
    """Write `model` (eval mode, on CPU) in `fmt`; returns the path."""
    check_format(fmt)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = for_inference(model, run_config.method)
    x = example_input(model)
    # The graph formats return the logits tensor, whatever the host's output object; in the
    # model's own mode (a fresh module is in training mode, and the exporters warn of it).
    graph = Logits(model).train(model.training)
    if fmt == "safetensors":
        tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        meta = {"format": MODEL_FORMAT, "run_config": json.dumps(run_config.to_dict())}
        atomic_write_bytes(out, save(tensors, metadata=meta))
    elif fmt == "onnx":
        write_onnx(graph, x, out)
        from .onnx_engine import write_metadata

        write_metadata(out, onnx_metadata(model, run_config))
    elif fmt == "export":
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.export.export(graph, (x,), dynamic_shapes=({0: batch},))
        with atomic_path(out) as tmp:
            torch.export.save(program, str(tmp))
    else:
        # Token counts are Python ints of the input size; the tracer warns that they become
        # constants, which is right: the graph is for this input size, any batch.
        # PyTorch deprecates TorchScript (its FutureWarning, twice per trace); the format's help says so once.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", r".*torch\.jit\.trace.* is deprecated", FutureWarning)
            traced = torch.jit.trace(graph, x, check_trace=False)
        with atomic_path(out) as tmp:
            traced.save(str(tmp))
    return out


def write_onnx(graph: nn.Module, x: torch.Tensor, out: str | Path) -> Path:
    """``graph`` (images in, one tensor out) as an ONNX file for any batch size (the dynamo exporter)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(graph, (x,), dynamic_shapes=({0: batch},), input_names=["images"],
                                output_names=["logits"], dynamo=True)
    with atomic_files(out) as tmp:
        program.save(str(tmp))
    return Path(out)


def onnx_metadata(model: nn.Module, cfg: RunConfig) -> dict:
    """What an exported file needs to stand alone: its classes, task, keep rate and the
    preprocessing its inputs had in evaluation."""
    from ..data.images import augment_mode, parse_data_spec
    from ..training.tasks import backbone_of
    from .onnx_engine import eval_preprocessing

    backbone = backbone_of(model)
    if cfg.task == "segment":
        mode = "vtab"  # image and mask resized together, no crop
    else:
        mode = augment_mode(parse_data_spec(cfg.data), cfg.augment) if cfg.data else "full"
    st = getattr(host_for(backbone).image_model(backbone), "sparse_tuning", None)
    return {"model": cfg.model, "method": cfg.method, "task": cfg.task, "classes": list(cfg.classes),
            "keep_rate": st.keep_rate if st is not None and st.sparsify_at else 1.0,
            "reduction": st.config.describe_reduction() if st is not None and not st.config.keeps_every_token
            else "none", "preprocessing": eval_preprocessing(host_for(backbone).data_config(backbone), mode),
            "quantized": "none"}


class Logits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model(x))


def export_run(run_dir: str | Path, fmt: str, out: str | Path, keep_rate: Optional[float] = None,
               quantize: Optional[str] = None) -> Path:
    """A trained run in ``fmt``; with ``quantize`` (ONNX only), the int8 file (its fp32 export
    is quantized by onnxruntime.quantization; int8-static calibrates on 64 of the run's images)."""
    from ..training.run import load_run  # the training code only to rebuild a run, not for load_model

    check_format(fmt)  # before the run is loaded
    if quantize is not None:
        from .onnx_engine import QUANTIZE, quantize as quantize_file

        if fmt != "onnx":
            raise UserError(f"--quantize applies to --format onnx (onnxruntime's int8), not {fmt}")
        if quantize not in QUANTIZE:
            raise UserError(f"--quantize {quantize}: expected one of {', '.join(QUANTIZE)}")
    if fmt == "pretrained":  # a folder, not one file
        from .pretrained import save_pretrained

        return save_pretrained(run_dir, out, keep_rate)
    if fmt == "peft":  # peft's LoRA folder
        from .peft_io import export_peft

        if keep_rate is not None:
            raise UserError("--keep-rate does not apply to --format peft: peft's model keeps every token")
        return export_peft(run_dir, out)
    model, cfg = load_run(run_dir, keep_rate)
    if fmt == "safetensors" and cfg.task != "classify":
        raise UserError("--format safetensors (for load_model) holds classifiers; a segmentation run exports as "
                        "onnx, export or pretrained")
    if keep_rate is not None:
        cfg = dataclasses.replace(cfg, sparse_tuning=dataclasses.replace(cfg.sparse_tuning, keep_rate=keep_rate))
    if quantize is None:
        return export_model(model, cfg, fmt, out)
    import tempfile

    calibration = calibration_images(model, cfg) if quantize == "int8-static" else None
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_model(model, cfg, "onnx", Path(tmp) / "fp32.onnx")
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        return quantize_file(fp32, out, quantize, calibration)


def calibration_images(model: nn.Module, cfg: RunConfig, n: int = 64) -> torch.Tensor:
    """n images of the run's training split, as training read them (static quantization's
    activation ranges come from them; never from the data the accuracy is measured on)."""
    from ..training.run import load_data
    from ..training.tasks import backbone_of

    backbone = backbone_of(model)
    data = load_data(cfg, host_for(backbone).image_model(backbone))
    picked = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[:n].tolist()
    read = [data.train[i] for i in picked]
    read = [sample[0] for sample in read if sample is not None]  # an unreadable image is skipped
    if not read:
        raise UserError("none of the training images drawn for calibration could be read")
    return torch.stack(read)


def load_model(path: str | Path, keep_rate: Optional[float] = None) -> nn.Module:
    """A model saved with ``export --format safetensors``: backbone, adapters and head, rebuilt
    from the file alone (no hub, no run folder)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != MODEL_FORMAT:
        raise UserError(f"{path} is not a Sparse-Tuning model file (format {meta.get('format')!r})")
    cfg = RunConfig.from_dict(json.loads(meta["run_config"]))
    model = build_architecture(cfg.model, cfg.img_size, cfg.num_classes, device="cpu")
    prepare(model, cfg.method, cfg.sparse_tuning, cfg.baseline)
    model = for_inference(model, cfg.method)  # the file holds the inference form's weights
    model.load_state_dict(load_file(str(path)), strict=True)
    if keep_rate is not None:
        set_keep_rate(model, keep_rate, cfg.method)
    return model.eval()
