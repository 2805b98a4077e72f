"""On a CUDA GPU only (`pytest -m gpu`; skipped on the CPU): what the CPU cannot show of the GPU path.

The GPU machine has torch, torchvision and torchmetrics but no Ray or Optuna: these drive detector/.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from detector import config as C
from detector.data import load_splits
from detector.engine import fit, limit_gpu_memory
from tests.conftest import TINY

pytestmark = pytest.mark.gpu


def test_bf16_is_what_amp_bf16_runs_and_boxes_stay_float32(tiny_data):
    from detector.model import build_model

    model = build_model(C.from_dict({**TINY, "backbone": "resnet18", "box_score_thresh": 0.0})).cuda().eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        out = model([torch.rand(1, 64, 64, device="cuda")])[0]
    assert out["boxes"].dtype == torch.float32 and out["scores"].dtype == torch.float32


def test_a_trial_capped_at_its_share_runs_out_of_memory_itself():
    """A process capped at a small share of the GPU gets the out-of-memory error for an allocation
    above its share, though the GPU has the memory free (a neighbour's share stays its own)."""
    code = ("import torch\n"
            "from detector.engine import limit_gpu_memory\n"
            "limit_gpu_memory(torch.device('cuda'), 0.05)\n"
            "_, total = torch.cuda.mem_get_info()\n"
            "n = int(total * 0.10) // 4\n"
            "try:\n"
            "    torch.empty(n, dtype=torch.float32, device='cuda')\n"
            "    print('allocated')\n"
            "except torch.cuda.OutOfMemoryError:\n"
            "    print('out of memory')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "out of memory"


def test_fit_reports_reserved_memory_and_empties_the_cache_when_it_ends(tiny_data, tmp_path):
    train, val = load_splits(str(tiny_data), val_fraction=0.3, seed=0)[:2]
    seen = []
    fit(C.from_dict({**TINY, "backbone": "resnet18", "epochs": 1, "amp": "bf16"}), train, val, tmp_path,
        device="cuda", on_epoch=lambda m, ck: seen.append(m), gpu_memory_fraction=0.5)
    (m,) = seen
    assert m["peak_mem_mb"] >= m["peak_alloc_mb"] > 0  # reserved >= allocated
    assert torch.cuda.memory_reserved() < m["peak_mem_mb"] * 2 ** 20 / 2  # the cache was returned
    limit_gpu_memory(torch.device("cuda"), 1.0)
