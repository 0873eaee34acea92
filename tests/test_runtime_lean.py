"""The runtime must work where torch cannot be imported, and must never import it."""

import json

import numpy as np
from conftest import run_without_torch

from runtime.panoptic_format import write_panoptic_png


def test_blocker_really_blocks_torch():
    proc = run_without_torch("import torch")
    assert proc.returncode != 0 and "blocked" in proc.stderr


def test_runtime_and_cli_work_without_torch(tmp_path):
    ids = np.zeros((8, 8), np.uint32)
    ids[:4] = 3
    write_panoptic_png(tmp_path / "a.png", ids)
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 8, "width": 8}],
        "annotations": [{"image_id": 1, "file_name": "a.png", "segments_info": [{"id": 3, "category_id": 1}]}],
        "categories": [{"id": 1, "name": "sky", "isthing": 0, "color": [1, 2, 3]}],
    }
    (tmp_path / "pan.json").write_text(json.dumps(data))
    proc = run_without_torch(
        f"""
        import pkgutil, importlib, sys
        import runtime
        for mod in pkgutil.walk_packages(runtime.__path__, "runtime."):
            importlib.import_module(mod.name)
        from runtime.cli import main
        code = main(["validate", r"{tmp_path / 'pan.json'}", r"{tmp_path}"])
        assert code == 0, code
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
        assert not leaked, leaked
        print("LEAN-OK")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "LEAN-OK" in proc.stdout and "1 annotations valid" in proc.stdout
