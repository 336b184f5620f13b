"""The visual tokenizer's codebook rules scaled to its codebook (issue 18 item 6): dead codes relative to a code's mean
use per step, k-means initialised from vectors pooled until there are several per code."""

from __future__ import annotations

import torch

from videolavit.config import load_config
from videolavit.models.quantizer import VectorQuantizer


def _paper_rules() -> dict:
    m = load_config(profile="paper", params_file=None).visual_tokenizer.model
    return {"dead_code_threshold": m.dead_code_threshold, "dead_code_fraction": float(m.dead_code_fraction),
            "per_code": int(m.kmeans_vectors_per_code)}


def _restarts(vq: VectorQuantizer) -> list[int]:
    """Codes restarted per step (vector-quantize-pytorch's replace, counted)."""
    codebook, counts = vq.vq._codebook, []
    original = codebook.replace

    def replace(batch_samples, batch_mask, seq_mask=None):
        counts.append(int(batch_mask.sum()))
        return original(batch_samples, batch_mask, seq_mask=seq_mask)

    codebook.replace = replace
    return counts


def test_paper_dead_codes_are_relative_to_the_mean_use():
    """~0.25 uses per code per step (one rank's share at paper scale is ~0.17): the old absolute threshold 2.0 restarts
    nearly the whole codebook every step; the paper profile's scaled rule restarts only codes far below the mean."""
    rules = _paper_rules()
    assert rules["dead_code_threshold"] is None and 0 < rules["dead_code_fraction"] < 1
    torch.manual_seed(0)
    codes, batch, steps = 256, 64, 40
    data = torch.randn(steps, 1, batch, 8)
    data[..., 0] = data[..., 0].abs() + 0.5  # one half-space: codes pointing away are never chosen

    def train(threshold, fraction):
        vq = VectorQuantizer(8, codes, decay=0.9, kmeans_init=False, dead_code_threshold=threshold,
                             dead_code_fraction=fraction).train()
        restarted = _restarts(vq)
        for x in data:
            vq(x)
        return restarted, vq

    old, _ = train(2.0, 0.1)
    new, vq = train(None, rules["dead_code_fraction"])
    assert sum(old) / (steps * codes) > 0.9  # the absolute rule: ~every code, every step
    assert 0 < sum(new) / (steps * codes) < 0.1  # the scaled rule: a few codes, the unused ones
    codebook = vq.vq._codebook
    mean_use = float(codebook.cluster_size.sum()) / codes
    threshold = float(codebook.threshold_ema_dead_code)
    # set before the step's EMA update: within a step's change of fraction × the mean use now
    assert abs(threshold / (rules["dead_code_fraction"] * mean_use) - 1) < 0.1


def test_paper_kmeans_waits_for_vectors_from_several_steps():
    """32 vectors a step for 128 codes: the first-batch rule initialises from 32 vectors (at most 32 distinct codes);
    the paper's rule pools per_code × 128 vectors over the first steps, then runs k-means on all of them."""
    per_code = _paper_rules()["per_code"]
    assert per_code >= 2
    torch.manual_seed(1)
    codes, batch = 128, 32
    steps_needed = per_code * codes // batch
    data = torch.randn(steps_needed + 2, 1, batch, 8)

    held_out = torch.nn.functional.normalize(torch.randn(2000, 8), dim=-1)

    def fit(vq):  # mean cosine of held-out vectors to their nearest code
        return float((held_out @ torch.nn.functional.normalize(vq.codebook, dim=-1).T).max(1).values.mean())

    first = VectorQuantizer(8, codes, kmeans_init=True, dead_code_threshold=0.0).train()
    first(data[0])
    vq = VectorQuantizer(8, codes, kmeans_init=True, dead_code_threshold=0.0, kmeans_init_vectors=per_code * codes).train()
    for step in range(steps_needed - 1):
        out = vq(data[step])
        assert not bool(vq.vq._codebook.initted) and int(out.codes.max()) == 0  # the empty codebook, untouched
    vq(data[steps_needed - 1])
    assert bool(vq.vq._codebook.initted)
    assert torch.unique(vq.codebook, dim=0).shape[0] == codes  # no duplicated codes (32 vectors for 128: duplicates)
    assert fit(vq) > fit(first) + 0.02  # codes spread over the data, not 32 points repeated
    out = vq(data[steps_needed])
    assert len(torch.unique(out.codes)) > batch // 2


def test_the_visual_tokenizer_passes_its_rules_to_the_quantizer():
    from videolavit.models.visual_tokenizer import VisualTokenizer

    cfg = load_config(profile="tiny", params_file=None)
    kwargs = {**dict(cfg.visual_tokenizer.model), "image_size": 64, "dead_code_threshold": None,
              "dead_code_fraction": 0.2, "kmeans_vectors_per_code": 3}
    q = VisualTokenizer(**kwargs).quantizer
    assert q.dead_code_fraction == 0.2 and q.kmeans_init_vectors == 3 * kwargs["codebook_size"]
    tiny = VisualTokenizer(**{**dict(cfg.visual_tokenizer.model), "image_size": 64}).quantizer
    assert tiny.dead_code_fraction is None and tiny.kmeans_init_vectors == 0  # the tiny recipe: as before
