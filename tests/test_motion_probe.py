"""The linear probe of motion codes: it reads a label the codes carry, stays near the prior on codes that carry none,
and joins each clip shard record to its manifest clip labels."""

from __future__ import annotations

import numpy as np
import torch

from videolavit.data.manifest import Sample, write_manifest
from videolavit.data.shards import ClipShardWriter
from videolavit.evaluation.probe import probe_motion_codes, ridge_probe

DIRECTIONS = ("left", "right", "up", "down")


def test_ridge_probe_reads_an_informative_feature_and_not_noise():
    rng = np.random.default_rng(0)
    y = torch.as_tensor(rng.integers(0, 4, 400))
    informative = torch.nn.functional.one_hot(y, 4).double() + 0.3 * torch.as_tensor(rng.standard_normal((400, 4)))
    x = torch.cat([informative, torch.as_tensor(rng.standard_normal((400, 20)))], dim=1)  # [N, 24]
    predicted = ridge_probe(x[:300], y[:300], x[300:], 4)
    assert float((predicted == y[300:]).double().mean()) > 0.9
    noise = torch.as_tensor(rng.standard_normal((400, 24)))
    predicted = ridge_probe(noise[:300], y[:300], noise[300:], 4)
    assert float((predicted == y[300:]).double().mean()) < 0.45


class DirectionCoder(torch.nn.Module):
    """Codes that say the clip's direction (sign of the mean motion per axis) or, ``blind``, always code 0."""

    codebook_size = 8

    def __init__(self, blind: bool = False):
        super().__init__()
        self.blind = blind
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def encode(self, motion):  # [B, 2, T, H, W] → [B, 6]
        mean = motion.mean(dim=(2, 3, 4))  # [B, 2]
        code = (mean[:, 0] > 0).long() + 2 * (mean[:, 1] > 0).long() + 4 * (mean.abs().argmax(1) == 1).long()
        code = torch.zeros_like(code) if self.blind else code
        return code[:, None].repeat(1, 6)


def write_labelled_clips(tmp_path, counts=(("train", 40), ("val", 20))):
    rng = np.random.default_rng(1)
    vectors = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
    for split, n in counts:
        samples = []
        with ClipShardWriter(tmp_path / "clips", split) as writer:
            for i in range(n):
                directions = [DIRECTIONS[int(rng.integers(4))] for _ in range(2)]
                clips = [{"direction": d, "speed": "slow"} for d in directions]
                samples.append(Sample(f"{split}{i}", "video", f"videos/{split}{i}.mp4", clips=clips))
                for k, d in enumerate(directions):
                    motion = np.zeros((2, 4, 2, 3), np.float32)
                    motion[0], motion[1] = vectors[d]
                    meta = {"video_id": f"{split}{i}", "clip": k, "split": split, "caption": "", "start_time": 0.0}
                    writer.write({"key": f"{split}{i}__c{k:03d}", "motion": motion, "keyframe": np.zeros((4, 4, 3), np.uint8),
                                  "meta": meta})
        write_manifest(tmp_path / "corpus", split, samples)


def test_probe_joins_clips_to_their_labels(tmp_path):
    write_labelled_clips(tmp_path)
    seeing = probe_motion_codes(DirectionCoder(), tmp_path / "clips", tmp_path / "corpus")
    blind = probe_motion_codes(DirectionCoder(blind=True), tmp_path / "clips", tmp_path / "corpus")
    assert seeing["probe/clips"] == 40.0
    assert seeing["probe/direction_acc"] == 1.0 and seeing["probe/direction_chance"] == 0.25
    assert blind["probe/direction_acc"] == blind["probe/direction_prior"] < 0.5
    assert seeing["probe/speed_chance"] == 1.0  # one speed in this corpus: chance and prior are 1


def test_probe_is_skipped_without_a_corpus(tmp_path):
    write_labelled_clips(tmp_path)
    assert probe_motion_codes(DirectionCoder(), tmp_path / "clips", tmp_path / "missing") == {}
