"""Constrained motion-span decoding: videolavit's KV-cache loop vs transformers' generate vs recomputing without a cache.

All three produce exactly N motion codes (the same mask); the table shows time per span and the ratio to ours.
    python benchmarks/lm_generation.py --hidden 256 --layers 4 --prompt 300 --tokens 135 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # compare decoding routes, not thread counts

import torch

from videolavit.inference.constraints import SpanLogitsProcessor, generate_span
from videolavit.models.lm import build_lm
from videolavit.vocab import Vocab


def ours(model, prompt, vocab, n):
    return generate_span(model, prompt, "motion", vocab, n, temperature=0)


def hf_generate(model, prompt, vocab, n):
    ids = torch.tensor([prompt + [vocab.mov_start]])  # [1, L]
    processor = SpanLogitsProcessor(vocab, "motion", ids.shape[1], n)
    out = model.generate(ids, logits_processor=[processor], do_sample=False, max_new_tokens=n + 1,
                         eos_token_id=vocab.mov_end, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


@torch.no_grad()
def no_cache(model, prompt, vocab, n):
    ids = prompt + [vocab.mov_start]
    processor = SpanLogitsProcessor(vocab, "motion", len(ids), n)
    out: list[int] = []
    while not out or out[-1] != vocab.mov_end:
        x = torch.tensor([ids + out])  # [1, L]
        out.append(int(processor(x, model(input_ids=x, use_cache=False).logits[:, -1]).argmax()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=300, help="prompt length (a caption + one clip)")
    parser.add_argument("--tokens", type=int, default=135, help="motion codes per span (paper: 135)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    vocab = Vocab(text_size=2000, visual_codes=1024, motion_codes=256)
    config = {"hidden_size": args.hidden, "num_hidden_layers": args.layers, "num_attention_heads": 4,
              "intermediate_size": 4 * args.hidden, "max_position_embeddings": args.prompt + args.tokens + 8}
    torch.manual_seed(0)
    model = build_lm(vocab, config).eval()
    prompt = torch.randint(0, vocab.text_size, (args.prompt,)).tolist()

    rows = []
    reference = None
    for name, route in (("videolavit generate_span (KV cache)", ours), ("transformers generate + processor", hf_generate),
                        ("no cache (recompute each step)", no_cache)):
        route(model, prompt[:16], vocab, 4)  # warm-up
        start = time.perf_counter()
        for _ in range(args.repeats):
            span = route(model, prompt, vocab, args.tokens)
        seconds = (time.perf_counter() - start) / args.repeats
        assert len(span) == args.tokens + 1 and span[-1] == vocab.mov_end
        reference = reference or span
        rows.append((name, seconds, span == reference))

    print(f"hidden {args.hidden}, {args.layers} layers, prompt {args.prompt}, {args.tokens} motion codes, 1 thread")
    print(f"{'route':40s} {'s/span':>8s} {'× ours':>7s} {'same ids':>9s}")
    for name, seconds, same in rows:
        print(f"{name:40s} {seconds:8.3f} {seconds / rows[0][1]:7.2f} {str(same):>9s}")


if __name__ == "__main__":
    main()
