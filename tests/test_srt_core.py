"""StochasticResonance: level 0, pass counts, determinism, super-resolution, SRT at any block, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TVF
from srt_reference import mean_field, pool, translate
from test_srt_exactness import PatchBackbone

import srt
from srt.shifts import grid_shifts, make_shifts


@pytest.fixture(scope="module")
def tiny_bb():
    return srt.load_backbone(
        "dino_vits16",
        pretrained=False,
        depth=3,
        embed_dim=64,
        num_heads=2,
        outputs=("tokens", "cls", "keys", "block0", "block1_norm", "block0_cls"),
    )


def test_level0_is_exactly_the_plain_forward(tiny_bb):
    x = torch.randn(2, 3, 48, 64)
    plain = tiny_bb(x)
    for extractor in (srt.StochasticResonance(tiny_bb, level=0), srt.build_extractor(tiny_bb, {"level": 0})):
        out = extractor(x)
        assert list(out) == list(plain) and extractor.passes == 1
        for k in plain:
            assert torch.equal(out[k], plain[k]), k
    # dense at level 0 is the nearest upsampling of the tokens
    dense = srt.StochasticResonance(tiny_bb, level=0).dense(x, stride=4)["tokens"]
    assert torch.equal(dense, plain["tokens"].repeat_interleave(4, -2).repeat_interleave(4, -1))


def test_pass_counts(tiny_bb):
    assert len(make_shifts(3)) == 49
    assert len(make_shifts(3, official_parity=True)) == 50
    assert len(make_shifts(3, samples=10)) == 10
    assert len(make_shifts(0)) == 1
    x = torch.randn(3, 3, 32, 48)
    seen = []
    original = tiny_bb.embed

    def counting_embed(images):
        seen.append(images.shape[0])
        return original(images)

    tiny_bb.embed = counting_embed
    try:
        for kw, passes in [
            ({"level": 3}, 49),
            ({"level": 3, "official_parity": True}, 50),
            ({"level": 2, "samples": 7}, 7),
        ]:
            seen.clear()
            sr = srt.StochasticResonance(tiny_bb, batch_size=16, **kw)
            sr(x)
            assert sr.passes == passes and sum(seen) == passes * 3
            assert max(seen) <= 16  # chunks never exceed batch_size (image, shift) pairs
    finally:
        del tiny_bb.embed
    # official parity: the first pass is the unshifted image, and (0, 0) appears twice in all
    s = make_shifts(3, official_parity=True).shifts
    assert s[0].tolist() == [0, 0] and int(((s == 0).all(1)).sum()) == 2


def test_seeded_determinism(tiny_bb):
    x = torch.randn(1, 3, 32, 32)
    a = srt.StochasticResonance(tiny_bb, level=3, samples=8, seed=5)
    b = srt.StochasticResonance(tiny_bb, level=3, samples=8, seed=5)
    c = srt.StochasticResonance(tiny_bb, level=3, samples=8, seed=6)
    assert torch.equal(a.shift_set.shifts, b.shift_set.shifts)
    assert not torch.equal(a.shift_set.shifts, c.shift_set.shifts)
    assert torch.equal(a(x)["tokens"], b(x)["tokens"])
    # results do not depend on the chunking
    d = srt.StochasticResonance(tiny_bb, level=3, samples=8, seed=5, batch_size=3)
    torch.testing.assert_close(d(x)["tokens"], a(x)["tokens"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("sampling", ["random", "stratified"])
def test_subsets_are_distinct_grid_shifts(sampling):
    s = make_shifts(4, samples=20, sampling=sampling, seed=1).shifts
    assert len({tuple(v) for v in s.tolist()}) == 20
    assert int(s.abs().max()) <= 4
    assert torch.equal(s, make_shifts(4, samples=20, sampling=sampling, seed=1).shifts)


def test_stratified_covers_the_grid_better_than_random():
    """Covering radius (farthest grid shift from its nearest chosen shift) is smaller for stratified sets."""
    grid = grid_shifts(3).float()

    def radius(chosen):
        return torch.cdist(grid, chosen.float()).min(1).values.max().item()

    strat = np.mean([radius(make_shifts(3, samples=10, sampling="stratified", seed=s).shifts) for s in range(10)])
    rand = np.mean([radius(make_shifts(3, samples=10, sampling="random", seed=s).shifts) for s in range(10)])
    assert strat < rand


def test_dense_field_super_resolves_a_known_fine_field():
    """Tokens are patch means of a smooth fine field: SRT's dense field is closer to it than nearest
    upsampling, and the error falls as L grows towards p/2 (measured away from the border)."""
    p = 16
    bb = PatchBackbone(p, mode="mean")
    coarse = torch.randn(1, 3, 3, 4, generator=torch.Generator().manual_seed(0))
    fine = F.interpolate(coarse, size=(128, 192), mode="bicubic", align_corners=False)
    interior = (..., slice(p, -p), slice(p, -p))

    def error(field):
        return ((field - fine)[interior] ** 2).mean().item()

    plain = bb(fine)["tokens"]
    nearest = error(plain.repeat_interleave(p, -2).repeat_interleave(p, -1))
    errors = [
        error(srt.StochasticResonance(bb, level=L, batch_size=128).dense(fine, stride=1)["tokens"])
        for L in range(1, p // 2 + 1)
    ]
    assert errors[0] < nearest
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.2 * nearest


def test_at_block_level0_is_plain_forward(tiny_bb):
    x = torch.randn(2, 3, 32, 48)
    plain = tiny_bb(x)
    out = srt.StochasticResonance(tiny_bb, level=0, at_block=1)(x)
    for k in plain:
        torch.testing.assert_close(out[k], plain[k], atol=1e-5, rtol=0)


@pytest.mark.parametrize("border", ["official", "normalized"])
def test_at_block_equals_brute_force(tiny_bb, border):
    """Run blocks 0..k on each shifted image, align and average the token grids (CLS plainly), run the
    remaining blocks and the final norm once."""
    k, p = 1, 16
    x = torch.randn(2, 3, 48, 64)
    m = tiny_bb.model
    sr = srt.StochasticResonance(tiny_bb, level=2, at_block=k, border=border, batch_size=10)
    shifts = list(sr.shift_set)
    per_pass = []
    for dy, dx in shifts:
        t = tiny_bb.embed(translate(x, dy, dx))  # position embeddings: tested in test_backbones
        outs = {}
        for i in range(k + 1):
            t = m.blocks[i](t)
            if i == 0:
                outs["block0"] = t[:, 1:].transpose(1, 2).reshape(2, -1, 3, 4)
                outs["block0_cls"] = t[:, 0]
        outs["grid"] = t[:, 1:].transpose(1, 2).reshape(2, -1, 3, 4)
        outs["cls"] = t[:, :1]
        per_pass.append(outs)
    grid = pool(mean_field(per_pass, shifts, p, "grid", border), p)
    cls = torch.stack([o["cls"] for o in per_pass]).mean(0)
    t = torch.cat([cls, grid.flatten(2).transpose(1, 2)], dim=1)
    ensembled = t
    for i in range(k + 1, len(m.blocks)):
        t = m.blocks[i](t)
    normed = m.norm(t)
    out = sr(x)
    # outputs at block k itself come from the ensembled state (the final norm runs after the ensemble)
    torch.testing.assert_close(
        out["block1_norm"], m.norm(ensembled)[:, 1:].transpose(1, 2).reshape(2, -1, 3, 4), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(out["tokens"], normed[:, 1:].transpose(1, 2).reshape(2, -1, 3, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["cls"], normed[:, 0], atol=1e-5, rtol=0)
    # outputs at or before the block are ensembles of the per-pass outputs
    torch.testing.assert_close(
        out["block0"], pool(mean_field(per_pass, shifts, p, "block0", border), p), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        out["block0_cls"], torch.stack([o["block0_cls"] for o in per_pass]).mean(0), atol=1e-5, rtol=0
    )
    # the CLS descriptor really changes (it comes from SRT features)
    assert not torch.allclose(out["cls"], tiny_bb(x)["cls"], atol=1e-4)


@pytest.mark.parametrize("dy,dx", [(0, 0), (3, -2), (-5, 7), (15, -15)])
def test_zero_fill_shift_matches_torchvision_affine(dy, dx):
    """Our exact translation = the official torchvision affine(translate=[dx, dy]) with zero fill."""
    x = torch.randn(2, 3, 20, 24)
    ours = srt.shift_image(x, dy, dx, "zero")
    ref = TVF.affine(
        x,
        angle=0.0,
        translate=[dx, dy],
        scale=1.0,
        shear=[0.0, 0.0],
        interpolation=TVF.InterpolationMode.NEAREST,
        fill=None,
    )
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("fill,np_mode", [("reflect", "reflect"), ("replicate", "edge")])
def test_other_fills_match_numpy_padding(fill, np_mode):
    x = torch.randn(1, 2, 9, 11)
    dy, dx = 2, -3
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (3, 3), (3, 3)), mode=np_mode)
    expected = padded[..., 3 - dy : 3 - dy + 9, 3 - dx : 3 - dx + 11]
    assert np.array_equal(srt.shift_image(x, dy, dx, fill).numpy(), expected)


def test_bad_input_names_the_setting(tiny_bb):
    sr = srt.StochasticResonance(tiny_bb, level=1)
    with pytest.raises(ValueError, match="4-D"):
        sr(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="3 channels"):
        sr(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        sr(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="^level=-1"):
        srt.StochasticResonance(tiny_bb, level=-1)
    with pytest.raises(ValueError, match=r"^level=16 .* 0 <= level < 16"):
        srt.StochasticResonance(tiny_bb, level=16)
    with pytest.warns(UserWarning, match="half the patch size"):
        srt.StochasticResonance(tiny_bb, level=9)
    with pytest.raises(ValueError, match=r"^samples=50 .* at most 49"):
        srt.StochasticResonance(tiny_bb, level=3, samples=50)
    with pytest.raises(ValueError, match="^border='edge'.*official, normalized"):
        srt.StochasticResonance(tiny_bb, border="edge")
    with pytest.raises(ValueError, match="^fill='mirror'"):
        srt.StochasticResonance(tiny_bb, fill="mirror")
    with pytest.raises(ValueError, match="^stride=3 .*divisor"):
        srt.StochasticResonance(tiny_bb, output="dense", stride=3)
    with pytest.raises(ValueError, match="stride=5 .*divisor"):
        sr.dense(torch.randn(1, 3, 32, 32), stride=5)
    with pytest.raises(ValueError, match="at_block=7 .*3 blocks"):
        srt.StochasticResonance(tiny_bb, at_block=7)
    with pytest.raises(ValueError, match="at_block=1 cannot be combined with output=dense"):
        srt.StochasticResonance(tiny_bb, at_block=1, output="dense")
    with pytest.raises(ValueError, match=r"unknown srt settings \['levels'\]"):
        srt.build_extractor(tiny_bb, {"levels": 3})


def test_dense_output_mode_and_stride(tiny_bb):
    x = torch.randn(1, 3, 32, 48)
    sr = srt.StochasticResonance(tiny_bb, level=2, output="dense", stride=4)
    out = sr(x)
    assert sr.stride == 4 and out["tokens"].shape == (1, 64, 8, 12) and out["cls"].shape == (1, 64)
    torch.testing.assert_close(out["tokens"], sr.dense(x, stride=4)["tokens"])
    assert srt.StochasticResonance(tiny_bb, level=2, output="dense").stride == 8  # default p/2


def test_jitter_ensemble(tiny_bb):
    mean, std = torch.tensor(tiny_bb.mean).view(3, 1, 1), torch.tensor(tiny_bb.std).view(3, 1, 1)
    x = (torch.rand(2, 3, 32, 32) - mean) / std  # a valid normalised image: jitter works in [0, 1] pixels
    plain = tiny_bb(x)
    same = srt.JitterEnsemble(tiny_bb, passes=5, strength=0.0)(x)  # no jitter: every pass is the plain one
    torch.testing.assert_close(same["tokens"], plain["tokens"], atol=1e-5, rtol=0)
    je = srt.JitterEnsemble(tiny_bb, passes=6, strength=0.4, seed=1, batch_size=4)
    out = je(x)
    expected = torch.stack([tiny_bb(je.jitter(x, t))["tokens"] for t in range(6)]).mean(0)
    torch.testing.assert_close(out["tokens"], expected, atol=1e-5, rtol=0)
    assert not torch.allclose(out["tokens"], plain["tokens"], atol=1e-3)
    assert torch.equal(out["tokens"], srt.JitterEnsemble(tiny_bb, passes=6, strength=0.4, seed=1)(x)["tokens"])
    ext = srt.build_extractor(tiny_bb, {"method": "jitter", "level": 3})
    assert isinstance(ext, srt.JitterEnsemble) and ext.passes == 49


def test_pca_rgb_separates_planted_regions(tmp_path):
    field = torch.zeros(8, 20, 30)
    field[0, :10] = 3.0  # top half differs along channel 0
    field[1, :, :15] += 2.0  # left half along channel 1
    field += 0.01 * torch.randn_like(field)
    rgb = srt.viz.pca_rgb(field)
    assert rgb.shape == (20, 30, 3) and rgb.dtype == np.uint8
    quadrants = [rgb[:10, :15], rgb[:10, 15:], rgb[10:, :15], rgb[10:, 15:]]
    means = [q.reshape(-1, 3).mean(0) for q in quadrants]
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(means[i] - means[j]).max() > 60  # four clearly different colours
    from PIL import Image

    path = srt.viz.save_pca_png(field, tmp_path / "pca.png")
    assert np.array_equal(np.asarray(Image.open(path)), rgb)
