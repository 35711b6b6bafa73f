"""The transformers host: the same method on a Hugging Face ViT as on timm's, exactly."""
import pytest
import torch
from conftest import randomize_adapters, tiny_vit

import sparse_tuning as st

transformers = pytest.importorskip("transformers")

DEPTH, WIDTH, HEADS, CLASSES = 12, 64, 4, 10


def hf_vit(depth=DEPTH, **kw):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=WIDTH, num_hidden_layers=depth, num_attention_heads=HEADS,
                       intermediate_size=4 * WIDTH, image_size=32, patch_size=4, num_labels=CLASSES,
                       layer_norm_eps=1e-6, qkv_bias=True, hidden_act="gelu", **kw)
    model = ViTForImageClassification(config).eval()
    with torch.no_grad():  # transformers starts position embeddings and class token near zero
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def timm_from_hf(hf):
    """A timm ViT holding the transformers model's weights (the mapping written here, by hand)."""
    vit = tiny_vit().double()
    layers = hf.vit.layers if hasattr(hf.vit, "layers") else hf.vit.encoder.layer
    state = {"patch_embed.proj.weight": hf.vit.embeddings.patch_embeddings.projection.weight,
             "patch_embed.proj.bias": hf.vit.embeddings.patch_embeddings.projection.bias,
             "cls_token": hf.vit.embeddings.cls_token, "pos_embed": hf.vit.embeddings.position_embeddings,
             "norm.weight": hf.vit.layernorm.weight, "norm.bias": hf.vit.layernorm.bias,
             "head.weight": hf.classifier.weight, "head.bias": hf.classifier.bias}
    from sparse_tuning.hosts.hf_vit import projections

    for i, layer in enumerate(layers):
        q, k, v, o = projections(layer.attention)
        # 5.x: mlp.fc1/fc2; 4.x: intermediate.dense and output.dense
        fc1, fc2 = (layer.mlp.fc1, layer.mlp.fc2) if hasattr(layer, "mlp") else (layer.intermediate.dense,
                                                                                 layer.output.dense)
        state.update({
            f"blocks.{i}.norm1.weight": layer.layernorm_before.weight, f"blocks.{i}.norm1.bias": layer.layernorm_before.bias,
            f"blocks.{i}.attn.qkv.weight": torch.cat([q.weight, k.weight, v.weight]),
            f"blocks.{i}.attn.qkv.bias": torch.cat([q.bias, k.bias, v.bias]),
            f"blocks.{i}.attn.proj.weight": o.weight, f"blocks.{i}.attn.proj.bias": o.bias,
            f"blocks.{i}.norm2.weight": layer.layernorm_after.weight, f"blocks.{i}.norm2.bias": layer.layernorm_after.bias,
            f"blocks.{i}.mlp.fc1.weight": fc1.weight, f"blocks.{i}.mlp.fc1.bias": fc1.bias,
            f"blocks.{i}.mlp.fc2.weight": fc2.weight, f"blocks.{i}.mlp.fc2.bias": fc2.bias,
        })
    vit.load_state_dict({k: v.detach().double() for k, v in state.items()})
    return vit.eval()


@pytest.fixture
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_the_weight_mapping_is_right(images):
    hf = hf_vit().double()
    vit = timm_from_hf(hf)
    with torch.no_grad():
        assert torch.allclose(hf(pixel_values=images.double()).logits, vit(images.double()), atol=1e-10)


def test_freshly_applied_at_keep_rate_1_it_computes_the_plain_model(images):
    plain = hf_vit()
    with torch.no_grad():
        expected = plain(pixel_values=images).logits
    model = st.apply(hf_vit(), st.SparseTuningConfig(keep_rate=1.0))
    with torch.no_grad():
        assert torch.allclose(model(pixel_values=images).logits, expected, atol=1e-5)
    assert all(len(k[0]) == 64 for k in [st.kept_tokens(model)[0]])


@pytest.mark.parametrize("merge", ["mean", "sum", "drop"])
@pytest.mark.parametrize("fused", [True, False])
def test_transformers_and_timm_give_the_same_logits_and_kept_tokens(images, tmp_path, merge, fused):
    hf = hf_vit().double()
    vit = timm_from_hf(hf)
    config = st.SparseTuningConfig(keep_rate=0.6, merge=merge)
    st.apply(vit, config)
    randomize_adapters(vit)
    st.save_adapters(vit, tmp_path / "timm.safetensors")
    st.load_adapters(hf, tmp_path / "timm.safetensors")  # the file moves from one host to the other
    vit.sparse_tuning.fused_attn = hf.sparse_tuning.fused_attn = fused
    x = images.double()
    with torch.no_grad():
        a, b = vit(x), hf(pixel_values=x).logits
    assert torch.allclose(a, b, atol=1e-10, rtol=0)
    assert all(torch.equal(p, q) for p, q in zip(st.kept_tokens(vit), st.kept_tokens(hf)))
    assert hf.sparse_tuning.last_tokens == vit.sparse_tuning.last_tokens
    # and back: the transformers model's file onto a fresh timm one
    st.save_adapters(hf, tmp_path / "hf.safetensors")
    again = st.load_adapters(timm_from_hf(hf_vit().double()), tmp_path / "hf.safetensors")
    again.sparse_tuning.fused_attn = fused
    with torch.no_grad():
        assert torch.allclose(again(x), a, atol=1e-10, rtol=0)


def test_only_adapters_and_head_train_and_the_output_object_stays(images):
    model = st.apply(hf_vit(), st.SparseTuningConfig())
    names = [n for n, _ in st.trainable_named_parameters(model)]
    assert names and all(".adapter." in n or n.startswith("classifier.") for n in names)
    out = model(pixel_values=images, labels=torch.tensor([1, 2]))
    assert out.loss is not None and out.logits.shape == (2, CLASSES)
    out.loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n not in names)
    assert st.count_flops(model, (3, 32, 32)) < st.count_flops(hf_vit(), (3, 32, 32))


def test_unsupported_transformers_models_are_refused_with_the_reason():
    from transformers import SiglipVisionConfig, SiglipVisionModel, SwinConfig, SwinModel

    siglip = SiglipVisionModel(SiglipVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                  intermediate_size=64, image_size=32, patch_size=4))
    with pytest.raises(ValueError, match="no class token"):
        st.apply(siglip)

    swin = SwinModel(SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 1],
                                window_size=2))
    with pytest.raises(ValueError, match="not a plain ViT"):
        st.apply(swin)


def _family(name):
    import transformers as tf

    small = dict(hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS, intermediate_size=4 * WIDTH,
                 image_size=32, patch_size=4)
    torch.manual_seed(0)
    if name == "deit-teacher":
        return tf.DeiTForImageClassificationWithTeacher(tf.DeiTConfig(**small, num_labels=CLASSES)), 2
    if name == "dinov2-registers":
        if not hasattr(tf, "Dinov2WithRegistersModel"):
            pytest.skip("Dinov2WithRegistersModel is in transformers 4.48 and later")
        return tf.Dinov2WithRegistersModel(tf.Dinov2WithRegistersConfig(**small, num_register_tokens=4)), 5
    if name == "dinov2":
        return tf.Dinov2ForImageClassification(tf.Dinov2Config(**small, num_labels=CLASSES)), 1
    return tf.CLIPVisionModel(tf.CLIPVisionConfig(**small)), 1


def _output(model, x):
    out = model(pixel_values=x)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("name", ["deit-teacher", "dinov2-registers", "dinov2", "clip"])
def test_other_families_at_keep_rate_1_compute_the_plain_model_and_count_tokens_as_on_timm(name, images):
    from sparse_tuning.core.sparsify import keep_count

    plain, prefix = _family(name)
    plain.eval()
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        expected = _output(plain, images)
    import copy

    model = st.apply(copy.deepcopy(plain), st.SparseTuningConfig(keep_rate=1.0))
    with torch.no_grad():
        assert torch.allclose(_output(model, images), expected, atol=1e-5)
    model.sparse_tuning.keep_rate = 0.7
    with torch.no_grad():
        _output(model, images)
    # 64 patches: each step keeps ceil(0.7 M) and fuses the rest into one token, after the prefix
    m, counts = 64, []
    for _ in range(3):
        k = keep_count(0.7, m)
        counts.append(prefix + k + 1)
        m = k + 1
    after = [n_out for n_in, n_out in model.sparse_tuning.last_tokens if n_in != n_out]
    assert after == counts
    assert model.sparse_tuning.num_prefix == prefix


def test_a_transformers_folder_through_the_command_line(tmp_path, capsys):
    """hf:DIR (save_pretrained, offline): train, eval, predict; flops agrees with timm's count."""
    import json

    from data_files import make_folder

    from sparse_tuning.cli import main

    hf_vit(depth=4).save_pretrained(tmp_path / "vit")  # 4 layers: a third of the ONNX export's time
    data = make_folder(tmp_path / "ds", classes=3, train=8, val=4)
    run = tmp_path / "run"
    assert main(["train", "--model", f"hf:{tmp_path / 'vit'}", "--data", f"folder:{data}", "--epochs", "1",
                 "--batch-size", "8", "--num-workers", "0", "--out", str(run)]) == 0
    assert json.loads((run / "results.json").read_text())["final"]["images"] == 12
    from safetensors.torch import load_file

    # the run's weights under the host-independent names: a run outlives transformers' renames
    assert all(k.startswith(("blocks.", "head.")) for k in load_file(run / "trainable.safetensors"))
    assert main(["eval", "--run", str(run), "--keep-rate", "0.5"]) == 0
    assert main(["predict", "--run", str(run), str(data / "val" / "class_0" / "0.png")]) == 0
    assert main(["sweep", "--run", str(run), "--keep-rates", "0.5,1.0", "--rounds", "1", "--batch-size", "4"]) == 0
    sweep = json.loads((run / "sweep.json").read_text())
    assert [r["keep_rate"] for r in sweep] == [0.5, 1.0] and sweep[0]["gflops"] < sweep[1]["gflops"]
    assert main(["visualize", "--run", str(run), "--out", str(tmp_path / "vis"),
                 str(data / "val" / "class_0" / "0.png")]) == 0
    assert (tmp_path / "vis" / "kept_tokens.png").stat().st_size > 0
    # Export: ONNX, checked with onnxruntime, and torch.export, against the trained model.
    import numpy as np
    import onnxruntime

    from sparse_tuning.training.run import load_run

    model, _ = load_run(run)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(pixel_values=x).logits
    assert main(["export", "--run", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.allclose(got, expected.numpy(), atol=1e-4)
    assert main(["export", "--run", str(run), "--format", "export", "--out", str(tmp_path / "m.pt2")]) == 0
    program = torch.export.load(str(tmp_path / "m.pt2"))
    assert torch.allclose(program.module()(x), expected, atol=1e-4)
    # The backbone still saves as transformers saves it.
    model.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "config.json").is_file()
    capsys.readouterr()
    hf_vit().save_pretrained(tmp_path / "vit12")  # the architecture of st_vit_micro_patch4_32
    assert main(["flops", "--model", f"hf:{tmp_path / 'vit12'}", "--json"]) == 0
    hf_cost = json.loads(capsys.readouterr().out)
    assert main(["flops", "--model", "st_vit_micro_patch4_32", "--num-classes", str(CLASSES), "--json"]) == 0
    timm_cost = json.loads(capsys.readouterr().out)
    assert hf_cost["gflops"] == pytest.approx(timm_cost["gflops"], rel=1e-9)
    assert hf_cost["tokens_per_block"] == timm_cost["tokens_per_block"]
    assert hf_cost["params_trainable"] == timm_cost["params_trainable"]


@pytest.mark.parametrize("checkpointing", [False, True])
def test_transformers_trainer_trains_only_adapters_and_head(tmp_path, checkpointing):
    from transformers import Trainer, TrainingArguments

    model = st.apply(hf_vit(), st.SparseTuningConfig())
    trainable = {n for n, _ in st.trainable_named_parameters(model)}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    rows = [{"pixel_values": torch.randn(3, 32, 32, generator=g), "labels": i % CLASSES} for i in range(16)]
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, max_steps=3,
                             learning_rate=1e-2, report_to=[], save_strategy="no", use_cpu=True,
                             dataloader_num_workers=0, gradient_checkpointing=checkpointing)
    Trainer(model=model, args=args, train_dataset=rows).train()
    assert model.is_gradient_checkpointing == checkpointing
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable


def test_lora_linear_and_full_run_on_the_transformers_host(images):
    from sparse_tuning.methods import prepare

    lora = prepare(hf_vit(), "lora")
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("classifier.") for n in trainable)
    q, v = ("q_proj", "v_proj") if hasattr(lora.vit, "layers") else ("query", "value")  # 5.x, 4.x
    assert any(q in n for n in trainable) and any(v in n for n in trainable)
    linear = prepare(hf_vit(), "linear")
    assert {n for n, p in linear.named_parameters() if p.requires_grad} == {"classifier.weight", "classifier.bias"}
    with pytest.raises(ValueError, match="not available on transformers models"):
        prepare(hf_vit(), "vpt")


@pytest.mark.parametrize("switch", ["transformers", "transformers-reentrant", "set_grad_checkpointing",
                                    "before-apply", "transformers-tome"])
def test_gradient_checkpointing_gives_the_same_gradients_and_recomputes_each_layer(images, switch):
    """transformers' own switch (reentrant asked for or not, before Sparse-Tuning is applied or
    after) and set_grad_checkpointing: the adapters' and head's gradients equal those without
    checkpointing, and each layer runs twice."""
    x, labels = images.double(), torch.tensor([1, 2])

    def gradients(checkpointing):
        model = hf_vit().double()
        if checkpointing == "before-apply":
            model.gradient_checkpointing_enable()
        rule = dict(reduction="tome", tome_r=(3,)) if switch.endswith("tome") else dict(keep_rate=0.6)
        model = st.apply(model, st.SparseTuningConfig(**rule))  # ToMe: the token sizes cross the checkpoints too
        randomize_adapters(model)
        # 5.x renamed the switch (the old name warns); 4.x has only gradient_checkpointing_enable
        enable = getattr(model, "activation_checkpointing_enable", None)
        if checkpointing in ("transformers", "transformers-tome"):
            (enable or model.gradient_checkpointing_enable)()
        elif checkpointing == "transformers-reentrant":
            kwargs = {"use_reentrant": True}
            enable(activation_checkpointing_kwargs=kwargs) if enable else model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs=kwargs)
        elif checkpointing == "set_grad_checkpointing":
            model.set_grad_checkpointing(True)
        model.train()
        calls = []
        for layer in model.sparse_tuning._blocks:
            layer_parts(layer)[0].register_forward_hook(lambda *_: calls.append(1))
        model(pixel_values=x, labels=labels).loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        return grads, len(calls), st.kept_tokens(model) + [torch.tensor(model.sparse_tuning.last_tokens)]

    from sparse_tuning.hosts.hf_vit import layer_parts

    expected, plain_calls, kept = gradients(None)
    got, calls, kept_checkpointed = gradients(switch)
    assert plain_calls == DEPTH and calls == 2 * DEPTH
    assert expected.keys() == got.keys() and any(".adapter." in n for n in got)
    for name in expected:
        assert torch.allclose(got[name], expected[name], atol=1e-10, rtol=0), name
    assert all(torch.equal(a, b) for a, b in zip(kept, kept_checkpointed))


@pytest.mark.parametrize("method", ["lora", "full"])
def test_gradient_checkpointing_of_the_baselines_on_transformers(images, method):
    """Without Sparse-Tuning the host turns on transformers' own checkpointing (non-reentrant,
    so LoRA inside a frozen backbone still gets its gradient)."""
    from sparse_tuning.hosts import host_for
    from sparse_tuning.methods import prepare

    def gradients(checkpointing):
        model = prepare(hf_vit().double(), method)
        with torch.no_grad():  # LoRA's B starts at zero
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05, generator=torch.Generator().manual_seed(3))
        if checkpointing:
            host_for(model).set_grad_checkpointing(model, True)
        model.train()
        calls = []
        for name, module in model.named_modules():
            if name.endswith("layernorm_before"):
                module.register_forward_hook(lambda *_: calls.append(1))
        model(pixel_values=images.double(), labels=torch.tensor([1, 2])).loss.backward()
        assert len(calls) == DEPTH * (2 if checkpointing else 1)
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    expected, got = gradients(False), gradients(True)
    assert expected.keys() == got.keys() and all(g is not None for g in got.values())
    for name in expected:
        assert torch.allclose(got[name], expected[name], atol=1e-10, rtol=0), name


def test_a_patched_transformers_model_pickles_with_torch_save(tmp_path, images):
    model = st.apply(hf_vit(), st.SparseTuningConfig(keep_rate=0.6))
    randomize_adapters(model)
    with torch.no_grad():
        expected = model(pixel_values=images).logits
    torch.save(model, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    assert type(loaded) is type(model)
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=images).logits, expected)
    loaded.gradient_checkpointing_enable()  # the transformers model's own override survives the round trip
    assert all(layer.gradient_checkpointing for layer in loaded.sparse_tuning._blocks)


@pytest.mark.parametrize("family", ["vit", "clip", "dinov2", "deit"])
def test_the_transforms_follow_the_image_processor_config(tmp_path, family):
    """Evaluation images come out as transformers' own image processor makes them: mean, std,
    resample, resize (exact, or shorter side then a centre crop); DINOv2 takes the processor's
    size although its config says another (its position table is interpolated)."""
    import numpy as np
    import transformers as tf
    from PIL import Image, ImageFilter

    from sparse_tuning.data.images import make_transforms
    from sparse_tuning.hosts import host_named

    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=4)
    imagenet = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    if family == "vit":
        model = tf.ViTModel(tf.ViTConfig(**small, image_size=32))
        proc = tf.ViTImageProcessor(size={"height": 32, "width": 32}, resample=2)
    elif family == "clip":
        model = tf.CLIPVisionModel(tf.CLIPVisionConfig(**small, image_size=32))
        proc = tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    elif family == "deit":  # an exact resize, then a centre crop (256 then 224 at full size)
        model = tf.DeiTModel(tf.DeiTConfig(**small, image_size=32))
        proc = tf.DeiTImageProcessor(size={"height": 40, "width": 40}, crop_size={"height": 32, "width": 32},
                                     resample=3, **imagenet)
    else:
        model = tf.Dinov2Model(tf.Dinov2Config(**small, image_size=64))
        proc = tf.BitImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32},
                                    resample=3, **imagenet)
    model.save_pretrained(tmp_path / "m")
    proc.save_pretrained(tmp_path / "m")
    host = host_named("hf:x")
    loaded = host.create(f"hf:{tmp_path / 'm'}")
    assert host.input_size(loaded) == (3, 32, 32)
    dc = host.data_config(loaded)
    assert dc["mean"] == pytest.approx(tuple(proc.image_mean)) and dc["std"] == pytest.approx(tuple(proc.image_std))
    _, evaluation = make_transforms(loaded, "full")
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (48, 60, 3), dtype=np.uint8)).filter(ImageFilter.GaussianBlur(3))
    ours = evaluation(image)
    theirs = tf.AutoImageProcessor.from_pretrained(tmp_path / "m")(images=image, return_tensors="pt").pixel_values[0]
    assert ours.shape == theirs.shape == (3, 32, 32)
    assert (ours - theirs).abs().mean() < 1e-3, (ours - theirs).abs().mean()  # a wrong crop: ~0.07
    with torch.no_grad():
        assert loaded(pixel_values=ours[None]).last_hidden_state.shape[1] == 1 + (family == "deit") + 64


def test_img_size_on_transformers_models(tmp_path):
    """DINOv2 interpolates its position table, so --img-size only changes the input; a pretrained
    ViT's table would be started afresh, so it is refused; a random one is built at the size."""
    import transformers as tf

    from sparse_tuning.hosts import host_named

    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=4)
    tf.Dinov2Model(tf.Dinov2Config(**small, image_size=64)).save_pretrained(tmp_path / "dino")
    tf.ViTModel(tf.ViTConfig(**small, image_size=32)).save_pretrained(tmp_path / "vit")
    host = host_named("hf:x")
    dino = host.create(f"hf:{tmp_path / 'dino'}", pretrained=True, img_size=48)
    assert host.input_size(dino) == (3, 48, 48) and dino.config.image_size == 64
    with torch.no_grad():
        assert dino(pixel_values=torch.randn(1, 3, 48, 48)).last_hidden_state.shape[1] == 1 + 144
    with pytest.raises(ValueError, match="position embeddings are for 32"):
        host.create(f"hf:{tmp_path / 'vit'}", pretrained=True, img_size=64)
    vit = host.create(f"hf:{tmp_path / 'vit'}", pretrained=False, img_size=64)
    assert host.input_size(vit) == (3, 64, 64)


def test_bench_on_a_transformers_folder(tmp_path, capsys):
    import json

    from sparse_tuning.cli import main

    hf_vit().save_pretrained(tmp_path / "vit")
    assert main(["bench", "--model", f"hf:{tmp_path / 'vit'}", "--methods", "sparse-tuning,lora,linear",
                 "--rounds", "1", "--warmup", "0", "--batch-size", "2", "--no-memory", "--out", str(tmp_path / "b")]) == 0
    rows = {r["method"]: r for r in json.loads((tmp_path / "b" / "bench.json").read_text())["rows"]}
    assert rows.keys() == {"sparse-tuning", "lora", "linear"}
    assert rows["sparse-tuning"]["gflops"] < rows["linear"]["gflops"] < rows["lora"]["gflops"]  # LoRA unmerged
    assert rows["linear"]["params_trainable"] == WIDTH * 100 + 100  # a 100-class head, as bench builds it
    assert main(["bench", "--model", f"hf:{tmp_path / 'vit'}", "--methods", "vpt", "--no-memory"]) == 2
    assert "not available on transformers models" in capsys.readouterr().err


def test_a_trainable_file_with_the_models_own_names_still_loads(tmp_path):
    """Runs written before trainable files took the host-independent names."""
    from safetensors.torch import save_file

    from sparse_tuning.training.checkpoint import load_trainable

    model = st.apply(hf_vit())
    randomize_adapters(model)
    save_file({n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}, tmp_path / "t.st")
    fresh = st.apply(hf_vit())
    load_trainable(fresh, tmp_path / "t.st")
    assert all(torch.equal(a, b) for a, b in zip(st.trainable_parameters(fresh), st.trainable_parameters(model)))


@pytest.mark.parametrize("name", ["ViTModel", "DeiTModel", "DeiTForImageClassification", "Dinov2Model",
                                  "CLIPVisionModelWithProjection"])
def test_every_supported_class_at_keep_rate_1_computes_the_plain_model(name, images):
    import copy

    import transformers as tf

    small = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                 image_size=32, patch_size=4)
    config = {"ViT": tf.ViTConfig, "DeiT": tf.DeiTConfig, "Dinov2": tf.Dinov2Config,
              "CLIP": tf.CLIPVisionConfig}[next(k for k in ("ViT", "DeiT", "Dinov2", "CLIP") if name.startswith(k))]
    torch.manual_seed(0)
    plain = getattr(tf, name)(config(**small)).eval()
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model = st.apply(copy.deepcopy(plain), st.SparseTuningConfig(keep_rate=1.0))
    with torch.no_grad():
        a, b = plain(pixel_values=images), model(pixel_values=images)
    assert type(a) is type(b)  # the output object is the class's own
    for key in a.keys():
        assert torch.allclose(a[key], b[key], atol=1e-5), key
    model.sparse_tuning.keep_rate = 0.5
    with torch.no_grad():
        model(pixel_values=images)
    assert model.sparse_tuning.last_tokens[-1][1] < 1 + 64


def test_the_random_rule_and_none_on_transformers_match_timm(images, tmp_path):
    hf = hf_vit().double()
    for reduction in ("random", "none"):
        a_model = st.apply(timm_from_hf(hf), st.SparseTuningConfig(keep_rate=0.5, reduction=reduction))
        randomize_adapters(a_model)
        st.save_adapters(a_model, tmp_path / f"{reduction}.safetensors")
        b_model = st.load_adapters(hf_vit().double(), tmp_path / f"{reduction}.safetensors")
        x = images.double()
        with torch.no_grad():
            torch.manual_seed(5)
            a = a_model(x)
            torch.manual_seed(5)
            b = b_model(pixel_values=x).logits
        assert torch.allclose(a, b, atol=1e-10, rtol=0)
        assert a_model.sparse_tuning.last_tokens == b_model.sparse_tuning.last_tokens
    assert a_model.sparse_tuning.last_tokens[-1] == (65, 65)  # none: every token


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("proportional", [True, False])
def test_tome_on_transformers_equals_tome_on_timm(images, tmp_path, fused, proportional):
    """ToMe (timm's checked against an independent ToMe ViT in test_reduction.py) with Dense
    Adapters: the same logits, token counts and token sources on both hosts."""
    hf = hf_vit().double()
    config = st.SparseTuningConfig(reduction="tome", tome_r=(3,), proportional_attention=proportional)
    vit = st.apply(timm_from_hf(hf), config)
    randomize_adapters(vit)
    st.save_adapters(vit, tmp_path / "tome.safetensors")
    st.load_adapters(hf, tmp_path / "tome.safetensors")
    vit.sparse_tuning.fused_attn = hf.sparse_tuning.fused_attn = fused
    x = images.double()
    with torch.no_grad():
        a, b = vit(x), hf(pixel_values=x).logits
    assert torch.allclose(a, b, atol=1e-10, rtol=0)
    assert hf.sparse_tuning.last_tokens == vit.sparse_tuning.last_tokens and vit.sparse_tuning.last_tokens[-1][1] == 29
    assert all(torch.equal(p, q) for p, q in zip(st.token_sources(vit), st.token_sources(hf)))
