import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from videolavit.errors import ConfigError, MissingArtifactError
from videolavit.models.blocks import count_parameters
from videolavit.models.vision_encoder import CLIP_MEAN, CLIP_STD
from videolavit.models.visual_tokenizer import VisualTokenizer

TINY = dict(
    image_size=64, patch_size=8, width=64, depth=2, heads=4, mlp_ratio=4.0,
    merger_depth=1, decoder_depth=2, code_dim=16, codebook_size=64, train_selection="deterministic",
    pixel_target_size=4, saliency_prior=4.0,
)


def shapes_images(n: int, seed: int) -> torch.Tensor:
    """Plain backgrounds with one colored rectangle (most patches redundant), CLIP-normalized [n, 3, 64, 64]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 1, 1, generator=g).expand(n, 3, 64, 64).clone()
    for i in range(n):
        h, w = torch.randint(12, 32, (2,), generator=g).tolist()
        y0 = int(torch.randint(0, 64 - h, (1,), generator=g))
        x0 = int(torch.randint(0, 64 - w, (1,), generator=g))
        x[i, :, y0 : y0 + h, x0 : x0 + w] = torch.rand(3, 1, 1, generator=g)
    return (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def train(model: VisualTokenizer, steps: int, batch: int = 8, lr: float = 2e-3) -> VisualTokenizer:
    """What the stage does: AdamW, cosine decay, gradient clipping at 1.0."""
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    for step in range(steps):
        out = model(shapes_images(batch, seed=step))
        opt.zero_grad()
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), 1.0)
        opt.step()
        sched.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    return train(VisualTokenizer(**TINY), steps=60)


# ---- paper sizes --------------------------------------------------------------------------------------------------
def test_paper_profile_is_lavit_sized():
    with torch.device("meta"):
        model = VisualTokenizer()  # the constructor defaults are the paper profile
    enc = model.encoder
    assert len(enc.blocks) == 40 and enc.pos_embed.shape == (1, 256, 1408)
    assert enc.blocks[0].attn.heads == 16 and enc.blocks[0].mlp[0].out_features == 6144  # 1408·4.3637, head 88
    assert 0.98e9 < count_parameters(enc) < 1.04e9  # EVA-CLIP ViT-G/14: ~1.0 B
    assert len(model.merger) == 12 and model.merger[0].self_attn.q.in_features == 1408
    assert tuple(model.quantizer.codebook.shape) == (16384, 32)
    assert len(model.decoder) == 12 and model.queries.shape == (1, 256, 1408)
    assert model.num_patches == 256 and model.target_dim == 14 * 14 * 3
    assert model.keep_ratio == pytest.approx(1 / 3)


# ---- preprocessing and input checks -------------------------------------------------------------------------------
def test_preprocess_resizes_and_normalizes_uint8():
    model = VisualTokenizer(**TINY)
    white = np.full((100, 80, 3), 255, dtype=np.uint8)
    x = model.preprocess(white)
    assert x.shape == (1, 3, 64, 64) and x.dtype == torch.float32
    expected = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(x[0, :, 32, 32], expected, atol=1e-4)
    batch = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    assert model.preprocess(batch).shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="uint8"):
        model.preprocess(white.astype(np.float32))
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        model.preprocess(np.zeros((64, 64, 4), dtype=np.uint8))


def test_wrong_image_shape_is_a_clear_error():
    model = VisualTokenizer(**TINY)
    with pytest.raises(ValueError, match=r"\[B, 3, 64, 64\]"):
        model(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="float"):
        model.encode(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        VisualTokenizer(**{**TINY, "image_size": 60})


# ---- the untrained model ------------------------------------------------------------------------------------------
def test_forward_gives_variable_codes_and_trains_the_selector():
    torch.manual_seed(0)
    model = VisualTokenizer(**TINY).train()
    out = model(shapes_images(4, seed=0))
    assert out["reconstruction"].shape == (4, 64, 3 * 4 * 4)  # each 8×8 patch pooled to 4×4 colours
    assert torch.allclose(out["target"], model.patchify(shapes_images(4, seed=0)))
    assert torch.isfinite(out["token_rec_loss"])
    assert len(out["codes"]) == 4
    for codes, mask in zip(out["codes"], out["keep_mask"]):
        assert codes.dtype == torch.long and 1 <= len(codes) == int(mask.sum()) <= 64
        assert 0 <= int(codes.min()) and int(codes.max()) < model.codebook_size
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    # the hard Gumbel mask is straight-through: the selector learns from reconstruction and the keep-ratio term
    grad = sum(p.grad.abs().sum() for p in model.selector.parameters() if p.grad is not None)
    assert grad > 0
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_training_gradients_are_identical_from_run_to_run_with_threads():
    """The decoder's position table is read through a one-hot product: the backward of advanced indexing
    (``token_pos[0][positions]``, and of ``F.embedding``) accumulated repeated positions in a thread-dependent order on
    CPU, so two identical ``dvc repro`` runs trained different visual tokenizers (and everything downstream differed)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        torch.manual_seed(0)
        model = VisualTokenizer(**TINY).train()
        state = copy.deepcopy(model.state_dict())  # the codebook's EMA moves with every training forward
        images = shapes_images(32, seed=0)
        grads = []
        for _ in range(4):
            model.load_state_dict(state)
            model.zero_grad()
            torch.manual_seed(1)  # a training forward may draw (a dead code's restart)
            model(images)["loss"].backward()
            grads.append(model.token_pos.grad.clone())
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(grads[0], g) for g in grads[1:])


def test_pixel_target_is_the_pixels_or_their_pooled_patches():
    x = shapes_images(4, seed=0)
    full = VisualTokenizer(**{**TINY, "pixel_target_size": None})
    assert full.target_dim == 3 * 8 * 8 and torch.equal(full.unpatchify(full.patchify(x)), x)  # the target is the pixels
    pooled = VisualTokenizer(**TINY)
    assert pooled.target_dim == 3 * 4 * 4
    low = F.avg_pool2d(x, 2)  # [4, 3, 32, 32]: 4×4 per 8px patch
    assert torch.allclose(pooled.unpatchify(pooled.patchify(x)), low.repeat_interleave(2, 2).repeat_interleave(2, 3))
    # every patch's pooled target averages to its mean colour
    colour = pooled.patchify(x).view(4, 64, 16, 3).mean(2)
    assert torch.allclose(colour, F.avg_pool2d(x, 8).flatten(2).transpose(1, 2), atol=1e-6)
    with pytest.raises(ConfigError, match="pixel_target_size"):
        VisualTokenizer(**{**TINY, "pixel_target_size": 3})


def test_saliency_prior_keeps_the_patches_that_stand_out():
    torch.manual_seed(0)
    x = shapes_images(8, seed=7)
    colour = F.avg_pool2d(x, 8).flatten(2).transpose(1, 2)  # [8, 64, 3]
    dist = (colour - colour.mean(1, keepdim=True)).norm(dim=-1)
    strong = VisualTokenizer(**{**TINY, "saliency_prior": 50.0}).eval()
    plain = VisualTokenizer(**{**TINY, "saliency_prior": 0.0}).eval()
    with torch.no_grad():
        kept_strong, kept_plain = strong(x)["keep_mask"], plain(x)["keep_mask"]
    # the rectangle's patches (far from the mean colour) are kept; the untrained selector alone keeps them by chance
    def outstanding(kept):
        return float((dist * kept).sum() / kept.sum() - (dist * ~kept).sum() / (~kept).sum())

    assert outstanding(kept_strong) > 0.5 and outstanding(kept_strong) > outstanding(kept_plain) + 0.3


def test_deterministic_training_selection_is_the_inference_mask_with_selector_gradients():
    torch.manual_seed(0)
    model = VisualTokenizer(**TINY)
    x = shapes_images(4, seed=0)
    train_mask = model.train()(x)["keep_mask"]
    eval_mask = model.eval()(x)["keep_mask"]
    assert torch.equal(train_mask, eval_mask)  # what the decoder learns from is what tokenize will produce
    model.train()
    model(x)["loss"].backward()
    assert sum(p.grad.abs().sum() for p in model.selector.parameters() if p.grad is not None) > 0
    gumbel = VisualTokenizer(**{**TINY, "train_selection": "gumbel"}).train()
    masks = {tuple(gumbel(x)["keep_mask"].flatten().tolist()) for _ in range(3)}
    assert len(masks) > 1  # LaVIT's sampled training mask
    with pytest.raises(ConfigError, match="train_selection"):
        VisualTokenizer(**{**TINY, "train_selection": "soft"})


@pytest.mark.parametrize("selection", ["expected", "threshold", "topk"])
def test_selector_never_drops_every_token(selection):
    torch.manual_seed(0)
    model = VisualTokenizer(**{**TINY, "selection": selection}).eval()
    with torch.no_grad():
        model.selector.out[-1].bias.copy_(torch.tensor([-50.0, 50.0]))  # index 0 = keep: p_keep ≈ 0 everywhere
    x = shapes_images(3, seed=1)
    fixed = 21 if selection == "topk" else 1  # topk keeps round(ρ·N) whatever the probabilities
    assert [len(c) for c in model.encode(x)] == [fixed] * 3
    assert [len(c) for c in model.encode(x, sample=True)] == [1, 1, 1]
    assert model.decode_features(model.encode(x)).shape == (3, 64, model.target_dim)


def test_topk_keeps_a_fixed_count():
    model = VisualTokenizer(**{**TINY, "selection": "topk"}).eval()
    assert [len(c) for c in model.encode(shapes_images(3, seed=2))] == [21, 21, 21]  # round(64 / 3)


def test_decode_features_rejects_bad_codes():
    model = VisualTokenizer(**TINY).eval()
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        model.decode_features([torch.tensor([3, 64])])
    with pytest.raises(ValueError, match="at most 64"):
        model.decode_features([torch.zeros(65, dtype=torch.long)])
    padded = torch.tensor([[1, 2, 3], [4, 0, 0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    from_padded = model.decode_features(padded, mask)
    from_list = model.decode_features([torch.tensor([1, 2, 3]), torch.tensor([4])])
    assert torch.allclose(from_padded, from_list, atol=1e-6)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = train(VisualTokenizer(**TINY), steps=2)  # k-means init + EMA have touched the codebook
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "model.safetensors"}
    loaded = VisualTokenizer.from_pretrained(tmp_path).eval()
    x = shapes_images(3, seed=5)
    a, b = model.encode(x), loaded.encode(x)
    assert all(torch.equal(i, j) for i, j in zip(a, b))
    assert torch.equal(model.decode_features(a), loaded.decode_features(b))
    with pytest.raises(MissingArtifactError, match="no visual tokenizer"):
        VisualTokenizer.from_pretrained(tmp_path / "missing")


# ---- the teacher path ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_teacher(tmp_path_factory):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(
        image_size=64, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
    )
    path = tmp_path_factory.mktemp("clip_teacher")
    CLIPVisionModel(cfg).save_pretrained(path)
    return path


def test_teacher_features_are_the_target_and_stay_frozen(clip_teacher, tmp_path):
    model = VisualTokenizer(**TINY, teacher_path=str(clip_teacher))
    assert model.encoder is None and model.target_dim == 32 and model.rec_loss == "cosine"
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    selector_before = model.selector.out[-1].weight.clone()
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    model.train()
    out = model(shapes_images(4, seed=0))
    out["loss"].backward()
    opt.step()
    assert out["reconstruction"].shape == out["target"].shape == (4, 64, 32)  # CLS dropped
    assert not model.teacher.training
    assert all(torch.equal(v, model.teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert not torch.equal(selector_before, model.selector.out[-1].weight)

    model.save_pretrained(tmp_path / "vt")
    from safetensors.torch import load_file

    assert not any(k.startswith("teacher.") for k in load_file(str(tmp_path / "vt" / "model.safetensors")))
    loaded = VisualTokenizer.from_pretrained(tmp_path / "vt").eval()  # re-loads the teacher from its recorded path
    x = shapes_images(2, seed=9)
    assert all(torch.equal(a, b) for a, b in zip(model.eval().encode(x), loaded.encode(x)))
    with pytest.raises(MissingArtifactError, match="teacher_path"):
        VisualTokenizer.from_pretrained(tmp_path / "vt", teacher_path=str(tmp_path / "gone"))


def test_teacher_with_another_image_size_or_patch_grid_is_a_config_error(clip_teacher):
    with pytest.raises(ConfigError, match="teacher"):
        VisualTokenizer(**{**TINY, "image_size": 32}, teacher_path=str(clip_teacher))
    with pytest.raises(ConfigError, match="not the 16 patches"):
        VisualTokenizer(**{**TINY, "patch_size": 16}, teacher_path=str(clip_teacher))


# ---- a trained tiny model -----------------------------------------------------------------------------------------
def test_inference_is_deterministic(trained):
    x = shapes_images(8, seed=1000)
    first = trained.encode(x)
    for _ in range(2):
        again = trained.encode(x)
        assert [len(c) for c in again] == [len(c) for c in first]
        assert all(torch.equal(a, b) for a, b in zip(first, again))
    # the official code's behaviour: Gumbel sampling at inference makes the count stochastic
    sampled = [[len(c) for c in trained.encode(x, sample=True)] for _ in range(3)]
    assert len({tuple(s) for s in sampled}) > 1


def test_mean_kept_fraction_is_close_to_rho(trained):
    x = shapes_images(64, seed=2000)
    kept = sum(len(c) for c in trained.encode(x)) / (64 * trained.num_patches)
    assert abs(kept - trained.keep_ratio) < 0.05


def test_codes_reconstruct_better_than_random_codes(trained):
    x = shapes_images(16, seed=3000)
    target = trained.patchify(x)
    codes = trained.encode(x)
    with torch.no_grad():
        rec = F.mse_loss(trained.decode_features(codes), target)
        g = torch.Generator().manual_seed(0)
        random_codes = [torch.randint(0, trained.codebook_size, (len(c),), generator=g) for c in codes]
        rnd = F.mse_loss(trained.decode_features(random_codes), target)
        # the detokenizer condition equals what training decoded (scattered kept tokens vs compact code list)
        assert torch.allclose(trained(x)["reconstruction"], trained.decode_features(codes), atol=1e-4)
    assert rec < 0.8 * rnd


PALETTE = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.9], [0.9, 0.8, 0.1]])


def palette_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tinted grey backgrounds with one rectangle of a palette colour: CLIP-normalized [n, 3, 64, 64], colour ids [n]."""
    g = torch.Generator().manual_seed(seed)
    x = (0.3 + 0.4 * torch.rand(n, 1, 1, 1, generator=g)).expand(n, 3, 64, 64).clone()
    x = x + 0.1 * torch.rand(n, 3, 1, 1, generator=g)
    labels = torch.randint(0, len(PALETTE), (n,), generator=g)
    for i in range(n):
        h, w = torch.randint(12, 24, (2,), generator=g).tolist()
        y0, x0 = int(torch.randint(0, 64 - h, (1,), generator=g)), int(torch.randint(0, 64 - w, (1,), generator=g))
        x[i, :, y0 : y0 + h, x0 : x0 + w] = PALETTE[labels[i]].view(3, 1, 1)
    return (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1), labels


def test_codes_carry_the_object_colour():
    # the must-have for the LM's appearance questions: an image's bag of codes tells its object's colour, not only the
    # background tint (before the token loss / low-pass target / saliency prior, the corpus probe was at chance)
    torch.manual_seed(0)
    model = VisualTokenizer(**TINY)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=2e-3)
    model.train()
    for step in range(60):
        out = model(palette_images(8, seed=step)[0])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    model.eval()

    def bags(seed):
        x, y = palette_images(64, seed)
        return torch.stack([torch.bincount(c, minlength=model.codebook_size) / len(c) for c in model.encode(x)]), y

    (fit_x, fit_y), (test_x, test_y) = bags(100), bags(200)
    centroids = torch.stack([fit_x[fit_y == k].mean(0) for k in range(len(PALETTE))])
    accuracy = float((torch.cdist(test_x, centroids).argmin(1) == test_y).float().mean())
    assert accuracy > 0.45  # chance 0.25; measured 0.55


@pytest.mark.slow
def test_longer_training_gives_dynamic_counts_and_good_reconstruction():
    torch.manual_seed(0)
    model = train(VisualTokenizer(**TINY), steps=400, batch=16)
    x = shapes_images(64, seed=4000)
    codes = model.encode(x)
    lengths = [len(c) for c in codes]
    assert abs(sum(lengths) / (64 * 64) - 1 / 3) < 0.05
    assert len(set(lengths)) > 3  # the count follows the image
    with torch.no_grad():
        rec = F.mse_loss(model.decode_features(codes), model.patchify(x))
        rnd = F.mse_loss(
            model.decode_features([torch.randint(0, model.codebook_size, (n,)) for n in lengths]), model.patchify(x)
        )
    assert rec < 0.5 * rnd
