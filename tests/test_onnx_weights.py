"""The ONNX-to-timm converter, on a tiny Hugging Face Dinov2 that the test exports itself with
PyTorch's TorchScript exporter (the exporter whose quirks the real file has: unnamed, transposed
MatMul weights; the position embedding split into two unnamed constants)."""
import warnings

import pytest
import torch

onnx = pytest.importorskip("onnx")
transformers = pytest.importorskip("transformers")

from timm.models.vision_transformer import VisionTransformer  # noqa: E402

from sparse_tuning.hosts.onnx_weights import onnx_parameters, timm_state_from_onnx  # noqa: E402


def tiny_dinov2():
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                                       image_size=28, patch_size=7, layerscale_value=0.5)
    torch.manual_seed(0)
    model = transformers.Dinov2Model(config).eval()
    with torch.no_grad():  # distinct values everywhere: the exporter merges equal initializers
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model


def timm_twin(img_size: int) -> VisionTransformer:
    """timm's layout of the tiny Dinov2 (vit_small_patch14_dinov2's settings, scaled down)."""
    return VisionTransformer(img_size=img_size, patch_size=7, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2,
                             init_values=1.0, num_classes=0, class_token=True, global_pool="token").eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = tiny_dinov2()
    path = tmp_path_factory.mktemp("onnx") / "tiny_dinov2.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 28, 28),), str(path), input_names=["pixel_values"],
                          dynamo=False, opset_version=17)
    return model, path


def test_the_export_has_the_quirks(exported):
    _, path = exported
    names = [t.name for t in onnx.load(str(path)).graph.initializer]
    assert not any(n.endswith("query.weight") or n.endswith("fc1.weight") for n in names)
    assert sum(n.startswith("onnx::MatMul") for n in names) == 2 * 6


def test_recovered_parameters_are_the_models(exported):
    model, path = exported
    params = onnx_parameters(onnx.load(str(path)))
    own = model.state_dict()
    missing = set(own) - set(params) - {"embeddings.mask_token"}
    assert not missing
    for name in own:
        if name in params:
            torch.testing.assert_close(torch.from_numpy(params[name].copy()), own[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("img_size", [28, 42])
def test_timm_model_matches_transformers(exported, img_size):
    """Same weights, two libraries: timm's output equals Hugging Face's (last hidden state), also at
    another input size with the position embedding resampled as Dinov2 does (bicubic, no antialias)."""
    from timm.layers import resample_abs_pos_embed

    model, path = exported
    state = timm_state_from_onnx(path)
    vit = timm_twin(img_size)
    grid = img_size // 7
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], (grid, grid), num_prefix_tokens=1,
                                                interpolation="bicubic", antialias=False)
    assert not vit.load_state_dict(state).missing_keys
    x = torch.randn(2, 3, img_size, img_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = vit.forward_features(x)
        theirs = model(pixel_values=x).last_hidden_state
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_a_graph_without_a_class_token_is_refused(tmp_path):
    linear = torch.nn.Linear(4, 4)
    path = tmp_path / "linear.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(linear, (torch.randn(1, 4),), str(path), dynamo=False)
    with pytest.raises(ValueError, match="cls_token"):
        onnx_parameters(onnx.load(str(path)))
