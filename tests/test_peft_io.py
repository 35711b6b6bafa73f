"""peft interop for LoRA on the transformers host (tools/peft_io.py), both ways, on a tiny ViT the
test builds: peft reads our folder with the run's logits, and we read peft's folder with peft's."""
import pytest
import torch
from data_files import make_folder
from test_hf_host import hf_vit

from sparse_tuning.cli import main
from sparse_tuning.tools.peft_io import load_peft
from sparse_tuning.training.run import load_run

peft = pytest.importorskip("peft")


def test_a_lora_run_exports_a_folder_peft_loads_with_the_same_logits(tmp_path):
    from transformers import ViTForImageClassification

    hf_vit(depth=4).save_pretrained(tmp_path / "vit")
    data = make_folder(tmp_path / "ds", classes=3, train=8, val=4)
    run = tmp_path / "run"
    assert main(["train", "--model", f"hf:{tmp_path / 'vit'}", "--data", f"folder:{data}", "--method", "lora",
                 "--epochs", "1", "--batch-size", "8", "--num-workers", "0", "--lr", "0.01", "--out", str(run)]) == 0
    out = tmp_path / "peft"
    assert main(["export", "--run", str(run), "--format", "peft", "--out", str(out)]) == 0
    base = ViTForImageClassification.from_pretrained(tmp_path / "vit", num_labels=3, ignore_mismatched_sizes=True)
    theirs = peft.PeftModel.from_pretrained(base, out).eval()
    ours, _ = load_run(run)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(theirs(pixel_values=x).logits, ours(pixel_values=x).logits, atol=1e-5)


def test_a_peft_folder_loads_here_and_takes_a_token_reduction(tmp_path):
    """A LoRA folder written by peft itself (random LoRA weights, a trained-looking classifier)
    gives peft's logits here; with class-attention at keep rate 1 the same, at 0.5 fewer tokens."""
    from peft import LoraConfig, get_peft_model

    hf_vit(depth=4).save_pretrained(tmp_path / "vit")
    from transformers import ViTForImageClassification

    from sparse_tuning.hosts import host_for

    base = ViTForImageClassification.from_pretrained(tmp_path / "vit")
    targets = host_for(base).lora_targets(base)  # query/value, or q_proj/v_proj in transformers 5
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=targets, modules_to_save=["classifier"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path / "peft")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.eval()(pixel_values=x).logits
        ours = load_peft(tmp_path / "peft", base=str(tmp_path / "vit"))
        assert torch.allclose(ours(pixel_values=x).logits, expected, atol=1e-5)
        same = load_peft(tmp_path / "peft", base=str(tmp_path / "vit"), reduction="class-attention", keep_rate=1.0)
        assert torch.allclose(same(pixel_values=x).logits, expected, atol=1e-5)
        reduced = load_peft(tmp_path / "peft", base=str(tmp_path / "vit"), reduction="class-attention", keep_rate=0.5)
        reduced(pixel_values=x)
    assert reduced.sparse_tuning.last_tokens[-1][0] < reduced.sparse_tuning.last_tokens[0][0]


def test_other_runs_are_refused_in_one_line(tmp_path, capsys):
    data = make_folder(tmp_path / "ds", classes=3, train=4, val=2)
    run = tmp_path / "run"
    assert main(["train", "--model", "st_vit_micro_patch4_32", "--no-pretrained", "--data", f"folder:{data}",
                 "--method", "lora", "--epochs", "1", "--batch-size", "4", "--num-workers", "0", "--out", str(run)]) == 0
    assert main(["export", "--run", str(run), "--format", "peft", "--out", str(tmp_path / "p")]) == 2
    assert "on a transformers model (hf:NAME)" in capsys.readouterr().err
