"""Optional dependencies: with a module of an extra hidden, the command that needs it says in one
line which extra to install, before any work; nothing else needs it."""
import sys

import pytest

from sparse_tuning.cli import main
from sparse_tuning.extras import EXTRAS, missing_module


def one_line(capsys, code, *needles):
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("module", EXTRAS["export"])
def test_onnx_export_without_the_export_extra_is_one_line(module, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if it were not installed
    code = main(["export", "--run", str(tmp_path / "no-run-needed"), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    one_line(capsys, code, f"--format onnx needs {module}", 'pip install -e ".[export]"')
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("module", EXTRAS["data"])
def test_svhn_without_the_data_extra_is_one_line(module, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)
    code = main(["train", "--model", "st_vit_micro_patch4_32", "--no-pretrained", "--data", f"svhn:{tmp_path}",
                 "--out", str(tmp_path / "run")])
    one_line(capsys, code, f"needs {module}", 'pip install -e ".[data]"')
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("logger, extra", [("tensorboard", "log"), ("wandb", "wandb")])
def test_a_logger_without_its_extra_is_one_line(logger, extra, tmp_path, monkeypatch, capsys):
    module = EXTRAS[extra][0]
    monkeypatch.setitem(sys.modules, module, None)
    code = main(["train", "--model", "st_vit_micro_patch4_32", "--no-pretrained", "--data", f"folder:{tmp_path}",
                 "--log", logger, "--out", str(tmp_path / "run")])
    one_line(capsys, code, f"--log {logger} needs {module}", f'pip install -e ".[{extra}]"')
    assert not (tmp_path / "run").exists()


def test_an_import_failing_inside_a_library_names_its_extra_or_its_package():
    assert '".[data]"' in str(missing_module(ImportError("no scipy", name="scipy.io"), "torchvision:SVHN:x"))
    assert "pip install gdown" in str(missing_module(ImportError("no gdown", name="gdown"), "torchvision:CelebA:x"))


def test_every_extra_module_is_listed_in_pyproject():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    for extra, modules in EXTRAS.items():
        line = re.search(rf"^{extra} = \[(.*)\]", text, re.M)
        assert line, extra
        for module in modules:
            assert f'"{module}"' in line.group(1), (extra, module)
