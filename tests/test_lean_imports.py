"""A stage started by the CLI imports Lightning and torchmetrics without what torchmetrics pulls in for metrics this
project never computes (transformers, matplotlib, scipy.signal); the project's metrics and those libraries still work."""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = r"""
import json, sys
from videolavit.cli import main
# the motion tokenizer stage module imports torch, Lightning and torchmetrics; a missing clips folder stops it before
# any training (exit 2: a clear error)
code = main(["motion_tokenizer", "tracking.enabled=false", "paths.clips=missing_clips", "paths.runs=runs_here"])
loaded = {m: m in sys.modules for m in ("lightning", "torchmetrics", "transformers", "matplotlib", "scipy.signal")}
import torch
from videolavit.metrics.reconstruction import video_psnr, video_ssim
a = torch.rand(1, 2, 3, 16, 16); b = a.clone()
b[..., :4] = 0.0
psnr, ssim = float(video_psnr(a, b)), float(video_ssim(a, b))
import matplotlib.pyplot, scipy.signal, transformers  # direct users are unaffected
from transformers import AutoConfig
print(json.dumps({"code": code, "loaded": loaded, "psnr": psnr, "ssim": ssim,
                  "direct": [callable(scipy.signal.butter), callable(matplotlib.pyplot.figure), AutoConfig is not None]}))
"""


def test_a_stage_started_by_the_cli_skips_torchmetrics_optional_imports(tmp_path):
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, cwd=tmp_path, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["code"] == 2  # stopped at the missing input, after importing the stage
    assert out["loaded"] == {"lightning": True, "torchmetrics": True, "transformers": False, "matplotlib": False,
                             "scipy.signal": False}
    assert 5.0 < out["psnr"] < 60.0 and 0.0 < out["ssim"] < 1.0
    assert out["direct"] == [True, True, True]


def test_install_is_a_no_op_once_torchmetrics_is_loaded():
    code = ("import torchmetrics, sys; from videolavit import lean_imports; "
            "print(lean_imports.install(), any(type(f).__name__ == '_FlagsOff' for f in sys.meta_path))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600)
    assert out.stdout.split() == ["False", "False"]
