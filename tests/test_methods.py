"""Every method: its trainable-parameter count by hand, its start state, and a few training steps."""
import pytest
import torch
from conftest import tiny_vit
from data_files import make_folder

import sparse_tuning as st
from sparse_tuning.methods import method_names, prepare
from sparse_tuning.methods.lora import merge_lora

METHODS = method_names()
from sparse_tuning.training.config import resolve_config
from sparse_tuning.training.run import load_run, train_run

C, K, DEPTH = 64, 10, 12          # tiny ViT width, classes, blocks
HEAD = C * K + K


def adapters(b, inputs):          # one Dense Adapter: a down per input, one up
    return inputs * (C * b + b) + (b * C + C)


HAND = {
    "linear": HEAD,
    "adapter": DEPTH * (2 * C * 64 + 64 + C) + HEAD,                        # down + up per block, b = 64
    "adaptformer": DEPTH * adapters(64, 1) + HEAD,
    "lora": DEPTH * (8 * C + 3 * C * 8) + HEAD,                               # A: r x C, B: 3C x r
    "vpt": DEPTH * 10 * C + HEAD,
    "ts-only": HEAD,
    "da-only": sum(adapters(32, 1 + (n >= 1) + (n >= 3)) for n in range(DEPTH)) + HEAD,
    "sparse-tuning": sum(adapters(32, 1 + (n >= 1) + (n >= 3)) for n in range(DEPTH)) + HEAD,
}


@pytest.mark.parametrize("method", METHODS)
def test_trainable_parameter_counts_by_hand(method):
    model = prepare(tiny_vit(), method)
    expected = sum(p.numel() for p in tiny_vit().parameters()) if method == "full" else HAND[method]
    assert st.count_params(model)[1] == expected


@pytest.mark.parametrize("method", ["adapter", "adaptformer", "lora", "da-only"])
def test_fresh_method_computes_the_backbone(method, images):
    expected = tiny_vit()(images)
    assert torch.allclose(prepare(tiny_vit(), method)(images), expected, atol=1e-5)


def test_adaptformer_is_a_scaled_single_input_adapter_without_sparsification():
    model = prepare(tiny_vit(), "adaptformer")
    assert model.sparse_tuning.sparsify_at == () and model.sparse_tuning.config.scale == 0.1
    assert all(len(blk.adapter.down) == 1 for blk in model.blocks)


def test_lora_merges_for_inference(images):
    model = prepare(tiny_vit(), "lora", options={"lora_rank": 4})
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    before = model(images)
    merge_lora(model)
    assert torch.allclose(model(images), before, atol=1e-5)


def test_vpt_prompts_change_the_output_and_keep_the_sequence(images):
    model = prepare(tiny_vit(), "vpt", options={"prompts": 3})
    assert model.blocks.prompts.shape == (12, 3, 64)
    assert model.forward_features(images).shape == (2, 65, 64)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_through_the_same_loop(method, tmp_path_factory):
    folder = make_folder(tmp_path_factory.mktemp("d") / "ds", classes=2, train=4, val=2)
    cfg = resolve_config({"model": "st_vit_micro_patch4_32", "pretrained": False, "data": f"folder:{folder}",
                          "method": method, "train": dict(epochs=1, batch_size=4, num_workers=0, lr=1e-3)})
    run = tmp_path_factory.mktemp("run")
    results = train_run(cfg, run)
    assert results["final"]["images"] == 4
    model, saved = load_run(run)
    assert saved.method == method
    before = {n: p.clone() for n, p in prepare(tiny_vit(num_classes=2), method).named_parameters()}
    changed = [n for n, p in model.named_parameters() if p.requires_grad and n in before
               and p.shape == before[n].shape and not torch.equal(p, before[n])]
    assert changed, "training changed no trainable weight"


def _one_backward(model, checkpointing: bool, recomputes: bool = True):
    from sparse_tuning.hosts import host_for

    if checkpointing:
        host_for(model).set_grad_checkpointing(model, True)
    model.double().train()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # adapters and prompts off their zero start, so every path carries a gradient
        for name, p in model.named_parameters():
            if p.requires_grad and p.dim() > 1:
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05)
    x = torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float64)
    calls = []
    for name, module in model.named_modules():
        if name.endswith("norm1"):
            module.register_forward_hook(lambda *_: calls.append(1))
    model(x).logsumexp(dim=1).sum().backward()
    # a checkpointed block runs again in the backward, unless no gradient passes through it
    assert len(calls) == DEPTH * (2 if checkpointing and recomputes else 1)
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", METHODS)
def test_gradient_checkpointing_gives_every_method_the_same_gradients(method):
    """The host's switch (timm's checkpoint_seq, or our per-block one once patched) recomputes
    without changing a gradient, whatever the method put inside the blocks."""
    expected = _one_backward(prepare(tiny_vit(), method), False)
    got = _one_backward(prepare(tiny_vit(), method), True, recomputes=method not in ("linear", "ts-only"))
    assert got.keys() == expected.keys() and all(g is not None for g in got.values())
    for name in expected:
        assert torch.allclose(got[name], expected[name], atol=1e-10, rtol=0), name


def test_a_run_with_grad_checkpointing_trains_the_same_weights(tmp_path, monkeypatch):
    from sparse_tuning.hosts.timm_host import TimmHost

    switched = []
    original = TimmHost.set_grad_checkpointing
    monkeypatch.setattr(TimmHost, "set_grad_checkpointing",
                        lambda self, model, enable=True: (switched.append(enable), original(self, model, enable)))
    folder = make_folder(tmp_path / "ds", classes=2, train=8, val=2)
    weights = []
    for checkpointing in (False, True):
        cfg = resolve_config({"model": "st_vit_micro_patch4_32", "pretrained": False, "data": f"folder:{folder}",
                              "train": dict(epochs=1, batch_size=4, num_workers=0, lr=1e-2,
                                            grad_checkpointing=checkpointing)})
        train_run(cfg, tmp_path / f"run{checkpointing}")
        model, _ = load_run(tmp_path / f"run{checkpointing}")
        weights.append(dict(st.trainable_named_parameters(model)))
        assert switched == [True] * checkpointing
    assert weights[0].keys() == weights[1].keys()
    assert not torch.equal(weights[0]["blocks.0.adapter.up.weight"], torch.zeros_like(weights[0]["blocks.0.adapter.up.weight"]))
    for name, p in weights[0].items():
        assert torch.allclose(weights[1][name], p, atol=1e-6), name
