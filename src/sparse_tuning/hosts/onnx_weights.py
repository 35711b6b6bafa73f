"""Weights out of an ONNX export of a Hugging Face DINOv2 backbone, as a timm state dict.

Why this exists: a real pre-trained ViT is sometimes only at hand as an ONNX graph (a model
shipped inside a package, no hub). PyTorch's TorchScript-based ONNX exporter keeps the names
of parameters it uses as they are (biases, norms, the class token, the patch convolution) but
folds each Linear's weight into a transposed, unnamed initializer (``onnx::MatMul_123``) that
feeds a MatMul whose output goes into an Add with the named bias. The position embedding,
split by Dinov2's interpolation code, becomes two unnamed initializers: the class token's
(1, 1, C) and the patches' (1, N, C). This module recovers every Hugging Face parameter name
by following the graph, then renames them into timm's ``vit_*_dinov2`` layout (q, k and v are
separate Linears in Hugging Face's model and one ``qkv`` in timm's; transformers 4.x and 5.x
names both work).

Pure functions of the graph; only ``onnx`` and ``numpy`` are needed (``pip install onnx``).
"""
from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError


def onnx_parameters(model: Any) -> dict[str, np.ndarray]:
    """Every parameter of the exported Hugging Face model under its PyTorch name.

    model: an ``onnx.ModelProto``. Linear weights come back in PyTorch's (out, in) layout;
    ``embeddings.position_embeddings`` is rebuilt as (1, 1 + N, C), class token first.
    """
    from onnx import numpy_helper

    graph = model.graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    # Constant nodes can hold tensors too (other exporter settings): treat them as initializers.
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            arrays.setdefault(node.output[0], numpy_helper.to_array(node.attribute[0].t))
    consumers: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)

    params = {name: a for name, a in arrays.items() if not name.startswith(("onnx::", "/")) and "." in name}
    used_unnamed: set[str] = set()
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        weight = next((i for i in node.input if i in arrays and i not in params), None)
        if weight is None:
            continue  # an activation x activation product (attention scores)
        adds = [c for c in consumers[node.output[0]] if c.op_type == "Add"]
        bias = next((i for c in adds for i in c.input if i.endswith(".bias") and i in params), None)
        if bias is None:
            raise UserError(f"MatMul {node.name!r} on {weight} has no named bias after it; "
                            "cannot tell which Linear it is")
        name = bias[: -len(".bias")] + ".weight"
        if name in params:
            raise UserError(f"two MatMuls claim {name} ({node.name!r})")
        params[name] = np.ascontiguousarray(arrays[weight].T)  # MatMul holds W^T
        used_unnamed.add(weight)

    cls_name = _find(params, "embeddings.cls_token")  # raises when the graph is not a ViT export
    C = params[cls_name].shape[-1]
    unnamed = {n: a for n, a in arrays.items() if n.startswith("onnx::") and n not in used_unnamed
               and a.ndim == 3 and a.shape[0] == 1 and a.shape[2] == C}
    cls_pos = [n for n, a in unnamed.items() if a.shape[1] == 1]
    patch_pos = [n for n, a in unnamed.items() if a.shape[1] > 1 and _is_square(a.shape[1])]
    if len(cls_pos) != 1 or len(patch_pos) != 1:
        raise UserError(f"expected one (1, 1, {C}) and one (1, N, {C}) position-embedding constant, found "
                        f"{[unnamed[n].shape for n in cls_pos + patch_pos]}")
    prefix = cls_name[: -len("embeddings.cls_token")]
    params[prefix + "embeddings.position_embeddings"] = np.concatenate(
        [unnamed[cls_pos[0]], unnamed[patch_pos[0]]], axis=1)
    return params


def dinov2_to_timm(hf: dict[str, np.ndarray | torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """A Hugging Face ``Dinov2Model`` state dict (under ``prefix``) as a timm ``vit_*_dinov2`` one."""
    t = {k[len(prefix):]: torch.tensor(np.asarray(v)) for k, v in hf.items() if k.startswith(prefix)}
    out = {
        "cls_token": t.pop("embeddings.cls_token"),
        "pos_embed": t.pop("embeddings.position_embeddings"),
        "patch_embed.proj.weight": t.pop("embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": t.pop("embeddings.patch_embeddings.projection.bias"),
        "norm.weight": t.pop("layernorm.weight"),
        "norm.bias": t.pop("layernorm.bias"),
    }
    t.pop("embeddings.mask_token", None)  # masked-image pre-training only; timm has none
    depth = 1 + max(int(m.group(1)) for k in t for m in [re.match(r"encoder\.layer\.(\d+)\.", k)] if m)
    # transformers 4.x names the attention Linears attention.attention.{query,key,value} and
    # attention.output.dense; 5.x names them attention.{q,k,v,o}_proj. Accept either.
    names_4x = {"q": "attention.attention.query", "k": "attention.attention.key",
                "v": "attention.attention.value", "o": "attention.output.dense"}
    for i in range(depth):
        src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
        attn = names_4x if src + names_4x["q"] + ".weight" in t else {p: f"attention.{p}_proj" for p in "qkvo"}
        renames = {"norm1": "norm1", "norm2": "norm2", attn["o"]: "attn.proj", "mlp.fc1": "mlp.fc1",
                   "mlp.fc2": "mlp.fc2"}
        for kind in ("weight", "bias"):
            out[dst + f"attn.qkv.{kind}"] = torch.cat([t.pop(src + f"{attn[p]}.{kind}") for p in "qkv"])
            for a, b in renames.items():
                out[dst + f"{b}.{kind}"] = t.pop(src + f"{a}.{kind}")
        out[dst + "ls1.gamma"] = t.pop(src + "layer_scale1.lambda1")
        out[dst + "ls2.gamma"] = t.pop(src + "layer_scale2.lambda1")
    if t:
        raise UserError(f"parameters not understood as a Dinov2 backbone: {sorted(t)[:5]}")
    return {k: v.float().contiguous() for k, v in out.items()}


def timm_state_from_onnx(path: str | Path, prefix: str | None = None) -> dict[str, torch.Tensor]:
    """The timm state dict of the Dinov2 backbone inside an ONNX file.

    prefix: where the backbone's names start (``"backbone."`` when it sits inside a larger
    model); None finds it from the class token's name.
    """
    import onnx

    params = onnx_parameters(onnx.load(str(path)))
    if prefix is None:
        prefix = _find(params, "embeddings.cls_token")[: -len("embeddings.cls_token")]
    return dinov2_to_timm(params, prefix)


def _find(params: dict[str, Any], suffix: str) -> str:
    hits = [n for n in params if n == suffix or n.endswith("." + suffix)]
    if len(hits) != 1:
        raise UserError(f"expected one parameter named *{suffix}, found {hits[:3] or 'none'}")
    return hits[0]


def _is_square(n: int) -> bool:
    r = int(round(n ** 0.5))
    return r * r == n
