"""Adapter files: exact round trip, and a clear refusal of every mismatch."""
import json

import pytest
import torch
from conftest import randomize_adapters, tiny_vit
from safetensors import safe_open
from safetensors.torch import save_file

import sparse_tuning as st


@pytest.fixture
def trained(images, tmp_path):
    model = st.apply(tiny_vit(), st.SparseTuningConfig(bottleneck=8, keep_rate=0.6))
    randomize_adapters(model)
    with torch.no_grad():
        model.head.weight.add_(0.1)
    path = tmp_path / "adapters.safetensors"
    st.save_adapters(model, path)
    return model, path


def test_round_trip_reproduces_outputs_exactly(trained, images):
    model, path = trained
    expected = model(images)
    fresh = st.apply(tiny_vit(), st.SparseTuningConfig(bottleneck=8, keep_rate=0.6))
    st.load_adapters(fresh, path)
    assert torch.equal(fresh(images), expected)


def test_loading_onto_a_plain_backbone_applies_the_saved_config(trained, images):
    model, path = trained
    fresh = st.load_adapters(tiny_vit(), path)
    assert fresh.sparse_tuning.config == model.sparse_tuning.config
    assert torch.equal(fresh(images), model(images))


def test_file_holds_only_trainable_weights_and_the_config(trained):
    model, path = trained
    with safe_open(str(path), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert keys == {n for n, _ in st.trainable_named_parameters(model)}
    assert json.loads(meta["config"])["bottleneck"] == 8
    assert json.loads(meta["backbone"])["depth"] == 12


def test_keep_rate_stays_a_runtime_knob(trained, images):
    model, path = trained
    fresh = st.apply(tiny_vit(), st.SparseTuningConfig(bottleneck=8, keep_rate=0.9))
    st.load_adapters(fresh, path)
    assert fresh.sparse_tuning.keep_rate == 0.9


@pytest.mark.parametrize("target,message", [
    (lambda: tiny_vit(depth=8), "another backbone: depth"),
    (lambda: tiny_vit(embed_dim=32), "another backbone: embed_dim"),
    (lambda: tiny_vit(num_classes=7), "num_classes"),
    (lambda: st.apply(tiny_vit(), st.SparseTuningConfig(bottleneck=16)), "another Sparse-Tuning config: bottleneck"),
    (lambda: st.apply(tiny_vit(), st.SparseTuningConfig(bottleneck=8, fusion="up-sum")), "fusion"),
    (lambda: st.apply(tiny_vit(), st.SparseTuningConfig(bottleneck=8, dense_inputs=(1,))), "dense_inputs"),
])
def test_mismatches_are_refused_before_any_weight_changes(trained, target, message):
    _, path = trained
    model = target()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        st.load_adapters(model, path)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_not_an_adapter_file(tmp_path):
    other = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(ValueError, match="not a Sparse-Tuning adapter file"):
        st.load_adapters(tiny_vit(), other)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors at all")
    with pytest.raises(ValueError, match="not a safetensors file"):
        st.load_adapters(tiny_vit(), junk)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        st.load_adapters(tiny_vit(), tmp_path / "missing.safetensors")


def test_save_is_atomic_and_leaves_no_temp_files(trained, tmp_path):
    model, path = trained
    st.save_adapters(model, path)  # overwrite in place
    assert [p.name for p in tmp_path.iterdir()] == ["adapters.safetensors"]
