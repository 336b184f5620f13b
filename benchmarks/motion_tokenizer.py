"""MotionTokenizer training throughput on this machine, and factorized vs joint attention at the paper input size.

    python benchmarks/motion_tokenizer.py                 # everything (the paper-size parts take minutes on a CPU)
    python benchmarks/motion_tokenizer.py --only tiny     # tiny | paper | attention

Each measurement runs in a fresh subprocess so its peak resident memory (ru_maxrss) is its own. Rows:
- training: clips/s of AdamW steps (forward + backward + step) of the tiny and the paper-size tokenizer;
- attention: one encoder block at the paper's full-resolution grid [B, 24, 20, 36, 512] (where attention costs most),
  factorized (spatial over H·W, then temporal over T, as in the paper) vs joint (one attention over T·H·W),
  forward + backward, with the ratio joint / factorized.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _train_steps(profile: str, batch: int, steps: int, warmup: int, threads: int) -> dict:
    import torch

    from videolavit.config import load_config, section_kwargs
    from videolavit.models.blocks import count_parameters
    from videolavit.models.motion_tokenizer import MotionTokenizer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_config(profile=profile, params_file=None)
    model = MotionTokenizer(**section_kwargs(cfg.motion_tokenizer.model))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    motion = torch.randn(batch, 2, model.frames, model.height, model.width)  # [B, 2, T, H, W]
    times = []
    for step in range(warmup + steps):
        started = time.perf_counter()
        out = model(motion)
        loss = torch.nn.functional.mse_loss(out["reconstruction"], motion) + out["vq_loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= warmup:
            times.append(time.perf_counter() - started)
    seconds = sum(times) / len(times)
    return {
        "what": f"train {profile}",
        "params_M": count_parameters(model) / 1e6,
        "tokens": model.tokens_per_clip,
        "batch": batch,
        "s_per_step": seconds,
        "clips_per_s": batch / seconds,
    }


def _attention_block(attention: str, batch: int, steps: int, threads: int) -> dict:
    import torch

    from videolavit.models.motion_tokenizer import SpatioTemporalBlock

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    block = SpatioTemporalBlock(512, 8, 4.0, attention)
    x = torch.randn(batch, 24, 20, 36, 512, requires_grad=True)  # [B, T, H, W, D]: the paper's first-stage grid
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        block(x).square().mean().backward()
        times.append(time.perf_counter() - started)
    return {"what": f"block {attention}", "batch": batch, "tokens": 24 * 20 * 36, "s_per_step": min(times)}


def _worker(args: argparse.Namespace) -> None:
    if args.worker == "train":
        row = _train_steps(args.profile, args.batch, args.steps, args.warmup, args.threads)
    else:
        row = _attention_block(args.attention, args.batch, args.steps, args.threads)
    row["peak_rss_GiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    print("ROW " + json.dumps(row))


def _measure(*worker_args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *worker_args], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("ROW "):
            return json.loads(line[4:])
    raise RuntimeError(f"benchmark worker failed: {out.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("tiny", "paper", "attention"), default=None)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--tiny-steps", type=int, default=10)
    parser.add_argument("--paper-steps", type=int, default=2)
    parser.add_argument("--attention-steps", type=int, default=1)
    parser.add_argument("--worker", choices=("train", "attention"), help=argparse.SUPPRESS)
    parser.add_argument("--profile", default="tiny", help=argparse.SUPPRESS)
    parser.add_argument("--attention", default="factorized", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return

    threads = ["--threads", str(args.threads)]
    rows = []
    if args.only in (None, "tiny"):
        from videolavit.config import load_config

        batch = int(load_config(profile="tiny", params_file=None).motion_tokenizer.train.batch_size)
        rows.append(_measure("--worker", "train", "--profile", "tiny", "--batch", str(batch), "--steps", str(args.tiny_steps), "--warmup", "2", *threads))
    if args.only in (None, "paper"):
        rows.append(_measure("--worker", "train", "--profile", "paper", "--batch", "1", "--steps", str(args.paper_steps), "--warmup", "1", *threads))
    if args.only in (None, "attention"):
        for attention in ("factorized", "joint"):
            rows.append(_measure("--worker", "attention", "--attention", attention, "--steps", str(args.attention_steps), *threads))

    print(f"\nMotionTokenizer benchmark ({args.threads} torch threads)")
    print(f"{'what':<18} {'params_M':>9} {'tokens':>7} {'batch':>5} {'s/step':>9} {'clips/s':>9} {'peak GiB':>9}")
    for r in rows:
        params = f"{r['params_M']:.2f}" if "params_M" in r else "-"
        clips = f"{r['clips_per_s']:.3f}" if "clips_per_s" in r else "-"
        print(f"{r['what']:<18} {params:>9} {r['tokens']:>7} {r['batch']:>5} {r['s_per_step']:>9.3f} {clips:>9} {r['peak_rss_GiB']:>9.2f}")
    by_name = {r["what"]: r for r in rows}
    if "block factorized" in by_name and "block joint" in by_name:
        f, j = by_name["block factorized"], by_name["block joint"]
        print(
            f"joint / factorized at [24, 20, 36]: time ×{j['s_per_step'] / f['s_per_step']:.1f}, "
            f"peak memory ×{j['peak_rss_GiB'] / f['peak_rss_GiB']:.2f}"
        )
    if "train tiny" in by_name and "train paper" in by_name:
        ratio = by_name["train tiny"]["clips_per_s"] / by_name["train paper"]["clips_per_s"]
        print(f"tiny / paper training throughput: ×{ratio:.0f}")


if __name__ == "__main__":
    main()
