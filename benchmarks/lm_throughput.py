"""LM training throughput: the pretrain stage's LightningModule + Trainer vs a bare PyTorch loop, same model and batches.

Both routes run the same Llama (same init), the same AdamW param groups and cosine schedule, gradient clipping and
per-modality loss on the same pre-made batches; the table gives tokens/s, the ratio to the bare loop (target overhead
≤ 10%) and an MFU estimate, 6·N·tokens/s over ``--peak-flops`` (N = all parameters).
    python benchmarks/lm_throughput.py --hidden 128 --layers 2 --seq-len 768 --batch 8 --steps 30 --threads 1
Runs alternate (bare, lightning, bare, lightning, ...) so that load from other processes hits both alike.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from videolavit.models.blocks import count_parameters
from videolavit.models.lm import build_lm, modality_loss_sums
from videolavit.vocab import Vocab


def make_batches(vocab: Vocab, count: int, batch: int, seq_len: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.randint(0, vocab.size, (batch, seq_len), generator=g)  # [B, L]
        out.append({"input_ids": ids, "labels": ids.clone(), "lengths": torch.full((batch,), seq_len)})
    return out


def build_model(args, vocab: Vocab):
    torch.manual_seed(0)
    config = {"hidden_size": args.hidden, "num_hidden_layers": args.layers, "num_attention_heads": args.heads,
              "intermediate_size": args.intermediate or int(args.hidden * 8 / 3 // 32 * 32 + 32),
              "max_position_embeddings": args.seq_len}
    return build_lm(vocab, config)


OPTIM = {"lr": 1e-3, "lr_other": None, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1, "warmup_steps": 5}


def bare_loop(args, vocab: Vocab, batches: list[dict]) -> float:
    """Tokens/s of a hand-written loop doing what the LightningModule does."""
    from videolavit.training.lm import lm_optimizer

    model = build_model(args, vocab).train()
    opt = lm_optimizer(model, OPTIM, len(batches))
    optimizer, scheduler = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
    tokens, started = 0, None
    for step, batch in enumerate(batches):
        if step == args.warmup:
            started = time.perf_counter()
        logits = model(input_ids=batch["input_ids"], use_cache=False).logits
        sums = modality_loss_sums(logits, batch["labels"], vocab)
        loss = sum(s for s, _ in sums.values()) / max(1, sum(n for _, n in sums.values()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        float(loss)  # the trainer also reads the loss each step
        if step >= args.warmup:
            tokens += int(batch["lengths"].sum())
    return tokens / (time.perf_counter() - started)


def lightning_loop(args, vocab: Vocab, batches: list[dict]) -> float:
    """Tokens/s of the pretrain stage's module under ``make_trainer`` (checkpoints and logging off)."""
    from torch.utils.data import DataLoader

    from videolavit.config import load_config
    from videolavit.training.lm import LanguageModelModule, TokenThroughput
    from videolavit.training.trainer import make_trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(params_file=None, overrides=[f"paths.runs={tmp}", "tracking.enabled=false",
                                                        f"pretrain.train.max_steps={len(batches)}",
                                                        f"pretrain.train.checkpoint_every_n_steps={10**9}",
                                                        f"pretrain.train.val_every_n_steps={10**9}"])
        module = LanguageModelModule(build_model(args, vocab).train(), vocab, OPTIM, len(batches))
        throughput = TokenThroughput(warmup_steps=args.warmup)
        # the checkpoint callback of make_trainer never fires within the run (every 10^9 steps)
        trainer = make_trainer(cfg, "pretrain", cfg.pretrain.train, callbacks=[throughput], enable_progress_bar=False,
                               limit_val_batches=0)
        trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    return throughput.tokens_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=352)
    parser.add_argument("--seq-len", type=int, default=768)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="runs per route, alternating")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--text-size", type=int, default=600)
    parser.add_argument("--visual-codes", type=int, default=512)
    parser.add_argument("--motion-codes", type=int, default=128)
    parser.add_argument("--peak-flops", type=float, default=5e10, help="peak FLOP/s of the hardware (CPU core: ~5e10)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    vocab = Vocab(args.text_size, args.visual_codes, args.motion_codes)
    batches = make_batches(vocab, args.steps + args.warmup, args.batch, args.seq_len, seed=0)
    params = count_parameters(build_model(args, vocab))
    results: dict[str, list[float]] = {"bare PyTorch loop": [], "LightningModule + Trainer": []}
    for _ in range(args.repeats):
        results["bare PyTorch loop"].append(bare_loop(args, vocab, batches))
        results["LightningModule + Trainer"].append(lightning_loop(args, vocab, batches))

    bare = statistics.median(results["bare PyTorch loop"])
    print(f"\nLlama hidden {args.hidden}, {args.layers} layers, {params / 1e6:.2f} M parameters, vocab {vocab.size}, "
          f"batch {args.batch} × {args.seq_len}, {args.steps} steps, {args.threads} thread(s)")
    print(f"{'route':28s} {'tokens/s':>10s} {'runs':>18s} {'× bare':>7s} {'overhead':>9s} {'MFU':>7s}")
    for name, values in results.items():
        value = statistics.median(values)
        runs = "/".join(f"{v:.0f}" for v in values)
        mfu = 6 * params * value / args.peak_flops
        print(f"{name:28s} {value:10.0f} {runs:>18s} {value / bare:7.3f} {100 * (bare / value - 1):8.1f}% {100 * mfu:6.2f}%")


if __name__ == "__main__":
    main()
