"""The package's structure: what loads what, the import direction of the layers, the command
line's help without torch, and a method added by registering it alone."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from data_files import make_folder

PKG = Path(__file__).resolve().parents[1] / "src" / "sparse_tuning"

# Layer of each part, and the layers it may import (one direction: down).
LAYERS = {"core": 0, "files": 0, "hosts": 1, "api": 2, "adapter_io": 3, "methods": 3, "pictures": 3,
          "data": 4, "training": 4, "tools": 4, "cli": 5, "__init__": 6, "__main__": 6}
ALSO = {("training", "tools"): False, ("data", "training"): False, ("data", "tools"): False,
        ("tools", "training"): True, ("training", "data"): True, ("tools", "data"): True}


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_loads_nothing_and_the_library_loads_no_application():
    code = ("import sys, json; import sparse_tuning as st; first = sorted(sys.modules);"
            "st.apply, st.SparseTuningConfig, st.kept_tokens, st.load_adapters, st.save_adapters, st.count_flops;"
            "print(json.dumps([first, sorted(sys.modules)]))")
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    first, after = json.loads(proc.stdout)
    assert not [m for m in first if m.startswith(("torch", "timm", "sparse_tuning."))]
    ours = [m for m in after if m.startswith("sparse_tuning.")]
    assert "sparse_tuning.api" in ours and "sparse_tuning.hosts" in ours and "sparse_tuning.tools.flops" in ours
    assert not [m for m in ours if m.startswith(("sparse_tuning.training", "sparse_tuning.data", "sparse_tuning.cli"))]


def test_load_model_needs_the_run_config_but_not_the_training_code():
    proc = run_python("import sys, json; import sparse_tuning as st; st.load_model; print(json.dumps(sorted(sys.modules)))")
    assert proc.returncode == 0, proc.stderr
    ours = [m for m in json.loads(proc.stdout) if m.startswith("sparse_tuning.")]
    assert "sparse_tuning.training.config" in ours
    assert not [m for m in ours if m.startswith(("sparse_tuning.training.loop", "sparse_tuning.training.run",
                                                  "sparse_tuning.data.images", "sparse_tuning.cli"))]


@pytest.mark.parametrize("argv,status", [
    (["--help"], 0), (["train", "--help"], 0), (["bench", "--help"], 0), (["flops", "--help"], 0),
    (["train", "--method", "nope"], 2), (["train", "--epochs", "many"], 2), (["sweep"], 2), (["methods"], 0),
])
def test_help_and_argument_errors_do_not_import_torch(argv, status):
    code = ("import sys; from sparse_tuning.cli import main\n"
            f"try:\n    code = main({argv!r})\nexcept SystemExit as e:\n    code = e.code\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO TORCH', code)")
    proc = run_python(code)
    assert proc.stdout.split()[-2:] == ["TORCH", str(status)] or proc.stdout.split()[-3:] == ["NO", "TORCH", str(status)]
    assert "NO TORCH" in proc.stdout, proc.stdout[-500:]


def test_every_train_option_has_a_description():
    from sparse_tuning.cli import make_parser

    parser = make_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    options = [a for a in train._actions if a.option_strings and a.dest != "help"]
    assert len(options) > 50
    bare = [a.option_strings[0] for a in options if not a.help or a.help.startswith("(default")]
    assert not bare, f"options without a description: {bare}"


def _imports(path: Path) -> list[str]:
    """The sparse_tuning parts a module imports (top-level and inside functions)."""
    rel = path.relative_to(PKG).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
            target = base + (node.module.split(".") if node.module else [])
            names = target[:1] or [a.name for a in node.names]
            out += names
    return out


def part_of(path: Path) -> str:
    return path.relative_to(PKG).parts[0].removesuffix(".py")


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_imports_go_down_the_layers(path):
    me = part_of(path)
    for other in _imports(path):
        if other == me or other not in LAYERS:
            continue
        allowed = ALSO.get((me, other), LAYERS[other] < LAYERS[me])
        assert allowed, f"{path.relative_to(PKG)} ({me}) imports {other}"


def test_only_hosts_import_timm_models():
    """timm appears outside hosts/ only for its data and loss utilities (transforms, Mixup)."""
    for path in PKG.rglob("*.py"):
        if part_of(path) == "hosts":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "timm" for a in node.names), path
            if isinstance(node, ast.ImportFrom) and not node.level and node.module.split(".")[0] == "timm":
                assert node.module in ("timm.data", "timm.loss"), f"{path}: from {node.module}"


def test_a_method_is_added_by_registering_it_alone(tmp_path, capsys):
    """BitFit (biases and head train) declared here, as a method file would: the CLI, the config,
    the training loop and the run folder take it with no other change."""
    from sparse_tuning.cli import main
    from sparse_tuning.methods import base
    from sparse_tuning.methods.base import Method, register, train_only

    def prepare(model, config, options):
        from sparse_tuning.hosts import host_for

        biases = [p for n, p in model.named_parameters() if n.endswith(".bias")]
        train_only(model, host_for(model).classifier(model))
        for p in biases:
            p.requires_grad_(True)

    register(Method("bitfit-test", "BitFit: biases and head train", prepare, order=15))
    try:
        folder = make_folder(tmp_path / "ds", classes=2, train=4, val=2)
        run = tmp_path / "run"
        assert main(["train", "--model", "st_vit_micro_patch4_32", "--no-pretrained", "--method", "bitfit-test",
                     "--data", f"folder:{folder}", "--epochs", "1", "--batch-size", "4", "--num-workers", "0",
                     "--out", str(run)]) == 0
        assert json.loads((run / "config.json").read_text())["method"] == "bitfit-test"
        assert main(["eval", "--run", str(run)]) == 0
        assert main(["methods"]) == 0
        assert "bitfit-test" in capsys.readouterr().out
    finally:
        del base._REGISTRY["bitfit-test"]
