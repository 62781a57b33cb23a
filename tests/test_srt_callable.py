"""The core contract: SRT over any callable, split(k) and SRT inside the network, the jitter sibling, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from srt_reference import mean_field, pool, translate

import srt
from srt.shifts import grid_shifts, make_shifts

P = 8


def head_and_tokens(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Not a Backbone: a token grid (stride 8), a map at pixel resolution (stride 1), a stride-2 map and a global."""
    g = torch.Generator().manual_seed(0)
    proj = torch.randn(4, 3, P, P, generator=g) / P
    tokens = torch.tanh(F.conv2d(images, proj, stride=P))
    pixel = torch.sin(3 * images[:, :1]) + images[:, 1:2] * images[:, 2:3]  # a non-linear per-pixel "depth"
    half = F.avg_pool2d(torch.tanh(images), 2)
    return {"tokens": tokens, "depth": pixel, "half": half, "cls": tokens.mean(dim=(2, 3)) ** 2}


def _brute(images, shifts, name, cell, border="official"):
    per_pass = [head_and_tokens(translate(images, dy, dx)) for dy, dx in shifts]
    return mean_field(per_pass, shifts, cell, name, border)


@pytest.mark.parametrize("border", ["official", "normalized"])
def test_any_callable_pooled_dense_and_globals_equal_brute_force(border):
    x = torch.randn(2, 3, 24, 40, generator=torch.Generator().manual_seed(1))
    sr = srt.StochasticResonance(head_and_tokens, level=3, patch_size=P, border=border, batch_size=7)
    shifts = list(sr.shift_set)
    assert sr.passes == 49 and sr.name == "head_and_tokens"
    out = sr(x)
    assert list(out) == ["tokens", "depth", "half", "cls"]
    torch.testing.assert_close(out["tokens"], pool(_brute(x, shifts, "tokens", P, border), P), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["half"], pool(_brute(x, shifts, "half", 2, border), 2), atol=1e-5, rtol=0)
    # the stride-1 output: the per-pixel mean of the un-shifted maps (zero-filled borders count when official)
    maps = torch.stack([translate(head_and_tokens(translate(x, dy, dx))["depth"], -dy, -dx) for dy, dx in shifts])
    if border == "official":
        expected = maps.mean(0)
    else:
        covered = torch.stack([translate(torch.ones_like(x[:, :1]), -dy, -dx) for dy, dx in shifts]).sum(0)
        expected = maps.sum(0) / covered
    torch.testing.assert_close(out["depth"], expected, atol=1e-5, rtol=0)
    cls = torch.stack([head_and_tokens(translate(x, dy, dx))["cls"] for dy, dx in shifts]).mean(0)
    torch.testing.assert_close(out["cls"], cls, atol=1e-5, rtol=0)
    # dense: grids coarser than the stride are refined to it, finer ones keep their own stride
    dense = sr.dense(x, stride=2)
    assert dense["tokens"].shape == (2, 4, 12, 20) and dense["half"].shape == (2, 3, 12, 20)
    assert dense["depth"].shape == (2, 1, 24, 40)
    torch.testing.assert_close(dense["tokens"], pool(_brute(x, shifts, "tokens", P, border), 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(dense["depth"], out["depth"], atol=1e-6, rtol=0)


def test_output_ensemble_of_a_pixel_map_by_hand():
    """One pass shifted right by 1 and one unshifted, on a 1x3 'image': the un-shifted maps averaged."""
    fn = lambda x: {"depth": x[:, :1] * 10}  # noqa: E731 - depth = 10 x first channel
    x = torch.tensor([1.0, 2.0, 3.0]).view(1, 1, 1, 3).expand(1, 3, 1, 3)
    sr = srt.StochasticResonance(fn, level=1, patch_size=2)
    sr.shift_set = srt.ShiftSet(torch.tensor([[0, 0], [0, 1]]), 1, "hand")
    # pass 2 sees [0, 1, 2] (content moved right, zero fill); moved back: [1, 2, 0] * 10
    assert sr(x)["depth"].flatten().tolist() == pytest.approx([10.0, 20.0, 15.0])


def test_level0_of_a_callable_is_the_callable():
    x = torch.randn(1, 3, 16, 24)
    out = srt.StochasticResonance(head_and_tokens, level=0, patch_size=P)(x)
    for k, v in head_and_tokens(x).items():
        assert torch.equal(out[k], v), k


@pytest.fixture(scope="module")
def deep_bb():
    return srt.load_backbone(
        "dino_vits16",
        pretrained=False,
        depth=3,
        embed_dim=64,
        num_heads=2,
        outputs=("tokens", "cls", "keys", "block0", "block1_norm", "block0_cls", "block2_cls"),
    )


@pytest.mark.parametrize("name", ["dino_vits16", "dinov2_vits14_reg", "sam_vitb16"])
def test_split_front_then_back_is_the_plain_forward(name):
    kwargs = dict(depth=3, embed_dim=64, num_heads=2)
    outputs = ("tokens", "keys", "block0", "block1")
    if name == "sam_vitb16":
        kwargs.update(global_attn_indexes=[2], window_size=4, img_size=64)
    else:
        outputs += ("cls", "block1_norm_cls", "block0_norm")
    bb = srt.load_backbone(name, pretrained=False, outputs=outputs, **kwargs)
    p = bb.patch_size
    x = torch.randn(2, 3, 3 * p, 4 * p)
    plain = bb(x)
    for k in (0, 1, 2, -1):
        front, back = bb.split(k)
        state = front(x)
        assert state["state"].shape == (2, 64, 3, 4)
        n_prefix = bb.num_prefix_tokens
        assert ("state_prefix" in state) == (n_prefix > 0)
        if n_prefix:
            assert state["state_prefix"].shape == (2, n_prefix, 64)  # CLS (+ 4 registers for _reg)
        out = back(state)
        assert list(out) == list(plain)
        for o in plain:
            torch.testing.assert_close(out[o], plain[o], atol=1e-6, rtol=0, msg=f"{name} k={k} {o}")


def test_split_bad_block_names_the_range(deep_bb):
    with pytest.raises(ValueError, match=r"block 3 is not valid .* 3 blocks; expected 0\.\.2"):
        deep_bb.split(3)
    with pytest.raises(ValueError, match="at_block=-4 .*3 blocks"):
        srt.StochasticResonance(deep_bb, at_block=-4)
    with pytest.raises(ValueError, match="split"):
        srt.StochasticResonance(head_and_tokens, patch_size=P, at_block=0)


def test_at_block_is_srt_over_front_then_back(deep_bb):
    x = torch.randn(1, 3, 32, 48)
    front, back = deep_bb.split(1)
    composed = back(srt.StochasticResonance(front, level=2, batch_size=5)(x))
    direct = srt.StochasticResonance(deep_bb, level=2, at_block=1)(x)
    assert list(direct) == list(deep_bb.outputs)
    for k in direct:
        torch.testing.assert_close(direct[k], composed[k], atol=1e-6, rtol=0)


def test_jitter_is_a_sibling_without_dense(deep_bb, tmp_path):
    je = srt.JitterEnsemble(deep_bb, passes=3)
    assert not isinstance(je, srt.StochasticResonance) and not hasattr(je, "dense")
    with pytest.raises(ValueError, match="^output=dense is not valid with method=jitter"):
        srt.build_extractor(deep_bb, {"method": "jitter", "output": "dense"})
    from tasks.tokencut import key_grid

    keys_bb = srt.load_backbone("dino_vits16", pretrained=False, outputs=("keys",), depth=2, embed_dim=64, num_heads=2)
    with pytest.raises(ValueError, match="task.grid=dense needs .*dense output"):
        key_grid(srt.JitterEnsemble(keys_bb, passes=2), torch.randn(1, 3, 32, 32), grid="dense")
    # any callable works with the jitter too, given its normalisation
    out = srt.JitterEnsemble(head_and_tokens, passes=3, mean=(0.5,) * 3, std=(0.5,) * 3)(torch.zeros(1, 3, 16, 16))
    assert out["tokens"].shape == (1, 4, 2, 2)
    with pytest.raises(ValueError, match="normalisation"):
        srt.JitterEnsemble(head_and_tokens, passes=3)


def test_step_thins_the_shift_grid():
    s = grid_shifts(6, step=2)
    assert len(s) == 49 and set(s[:, 0].tolist()) == {-6, -4, -2, 0, 2, 4, 6}
    assert len(make_shifts(7, step=2)) == 49  # multiples of 2 up to 7: -6..6
    assert len(make_shifts(3, samples=5, sampling="stratified", step=2)) == 5
    with pytest.raises(ValueError, match="step=4 .*level=3"):
        make_shifts(3, step=4)


def test_bad_callables_get_named_errors():
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match="patch_size is required"):
        srt.StochasticResonance(lambda im: {"t": im})
    with pytest.raises(ValueError, match="returned a Tensor; expected a dict"):
        srt.StochasticResonance(lambda im: im, patch_size=8, level=1)(x)
    with pytest.raises(ValueError, match=r"output 'bad' is a 3x3 grid .* for 16x16 images"):
        srt.StochasticResonance(lambda im: {"bad": im[..., :3, :3]}, patch_size=8, level=1)(x)
    with pytest.raises(ValueError, match=r"output 'skew' is a 2x4 grid"):
        srt.StochasticResonance(lambda im: {"skew": F.avg_pool2d(im, (8, 4))}, patch_size=8, level=1)(x)
    with pytest.raises(ValueError, match="output 'n' is int"):
        srt.StochasticResonance(lambda im: {"n": 3}, patch_size=8, level=1)(x)
    with pytest.raises(ValueError, match="4-D tensor"):
        srt.StochasticResonance(head_and_tokens, patch_size=8, level=1)(torch.randn(3, 16, 16))
    # a 4-pixel grid cannot be refined to stride 3 (patch 12 admits 3, the output does not)
    fn = lambda im: {"g": F.avg_pool2d(im, 4)}  # noqa: E731
    with pytest.raises(ValueError, match="output 'g' has 4-pixel cells, which cannot be refined to stride 3"):
        srt.StochasticResonance(fn, patch_size=12, level=1).dense(torch.randn(1, 3, 24, 24), stride=3)


def test_memory_and_chunking_do_not_change_callable_results():
    x = torch.randn(1, 3, 16, 24)
    a = srt.StochasticResonance(head_and_tokens, level=2, patch_size=P, batch_size=1)(x)
    b = srt.StochasticResonance(head_and_tokens, level=2, patch_size=P, batch_size=100)(x)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


def test_median_and_dispersion_of_a_pixel_map():
    x = torch.randn(1, 3, 8, 8)
    sr = srt.StochasticResonance(head_and_tokens, level=1, patch_size=P, aggregate="median", dispersion=True)
    out = sr(x)
    maps = torch.stack([translate(head_and_tokens(translate(x, dy, dx))["depth"], -dy, -dx) for dy, dx in sr.shift_set])
    torch.testing.assert_close(out["depth"], maps.median(0).values, atol=1e-6, rtol=0)
    torch.testing.assert_close(out["depth_var"], maps.var(0, unbiased=False), atol=1e-5, rtol=0)
