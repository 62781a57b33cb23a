"""SRT's fast pooled and dense paths equal an independent brute force, at every level, stride and border."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from srt_reference import aligned_stack, brute_force, mean_field, pass_outputs, pool, translate

import srt


class PatchBackbone(nn.Module):
    """A cheap non-linear 'ViT' that is not an srt.Backbone: tokens = tanh(patch embedding) or patch means.

    SRT wraps any callable images -> dict; this one only has the attributes SRT reads (patch_size, name, mean,
    std). Fast enough to run every level 1..p-1 on the full shift grid."""

    def __init__(self, patch: int, channels: int = 5, mode: str = "tanh", seed: int = 0):
        super().__init__()
        self.name, self.patch_size = f"patch{patch}", patch
        self.mean = self.std = (0.5, 0.5, 0.5)
        self.mode = mode
        g = torch.Generator().manual_seed(seed)
        self.proj = torch.randn(channels, 3, patch, patch, generator=g) / patch
        self.embed_dim = channels if mode == "tanh" else 3

    def forward(self, images):
        if self.mode == "mean":
            return {"tokens": F.avg_pool2d(images, self.patch_size)}
        return {"tokens": torch.tanh(F.conv2d(images, self.proj, stride=self.patch_size))}


def _divisors(p: int) -> list[int]:
    return [s for s in range(1, p + 1) if p % s == 0]


@pytest.mark.parametrize("patch,size", [(16, (48, 80)), (14, (42, 70))])
@pytest.mark.parametrize("border", ["official", "normalized"])
def test_every_level_and_stride_equals_brute_force(patch, size, border):
    """Pooled == dense stride-1 pooled by p == brute force, for L = 1..p-1 and every stride dividing p."""
    bb = PatchBackbone(patch)
    images = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    for level in range(1, patch):
        # the full grid up to 49 shifts; beyond, 40 random ones (keeps the brute force quick; every L is covered)
        samples = None if (2 * level + 1) ** 2 <= 49 else 40
        with pytest.warns(UserWarning) if level > patch / 2 else _no_warning():
            sr = srt.StochasticResonance(bb, level=level, samples=samples, seed=level, border=border, batch_size=512)
        ref = brute_force(bb, images, list(sr.shift_set), border=border)
        pooled = sr(images)["tokens"]
        dense1 = sr.dense(images, stride=1)["tokens"]
        torch.testing.assert_close(pooled, pool(ref, patch), atol=1e-5, rtol=0, msg=f"pooled L={level}")
        torch.testing.assert_close(pool(dense1, patch), pooled, atol=1e-5, rtol=0, msg=f"dense1 pooled L={level}")
        for stride in _divisors(patch)[:-1]:
            dense = sr.dense(images, stride=stride)["tokens"]
            assert dense.shape == (1, bb.embed_dim, size[0] // stride, size[1] // stride)
            torch.testing.assert_close(
                dense, pool(ref, stride), atol=1e-5, rtol=0, msg=f"dense stride {stride} L={level}"
            )


class _no_warning:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


@pytest.mark.parametrize("name,size", [("dino_vits16", (48, 80)), ("dinov2_vits14", (42, 70))])
@pytest.mark.parametrize("border", ["official", "normalized"])
def test_tiny_vit_matches_brute_force(name, size, border, tiny_kwargs):
    """The real ViT path (shift, embed, blocks, norm) equals the brute force, small and large shifts."""
    bb = srt.load_backbone(name, pretrained=False, outputs=("tokens", "keys", "cls"), **tiny_kwargs)
    p = bb.patch_size
    images = torch.randn(2, 3, *size)
    settings = [dict(level=1), dict(level=3, official_parity=True), dict(level=p - 1, samples=12, seed=3)]
    for kw in settings:
        with pytest.warns(UserWarning) if kw["level"] > p / 2 else _no_warning():
            sr = srt.StochasticResonance(bb, border=border, batch_size=16, **kw)
        shifts = list(sr.shift_set)
        out = sr(images)
        per_pass = pass_outputs(bb, images, shifts)
        for grid_name in ("tokens", "keys"):
            ref = mean_field(per_pass, shifts, p, name=grid_name, border=border)
            torch.testing.assert_close(out[grid_name], pool(ref, p), atol=1e-5, rtol=0)
            dense = sr.dense(images, stride=p // 2)[grid_name]
            torch.testing.assert_close(dense, pool(ref, p // 2), atol=1e-5, rtol=0)
        cls_ref = torch.stack([o["cls"] for o in per_pass]).mean(0)
        torch.testing.assert_close(out["cls"], cls_ref, atol=1e-5, rtol=0)


def test_official_fast_formula_by_hand():
    """One token grid, one shift, worked by hand with the official 4-neighbour formula (PROTOCOLS.md 1.5)."""
    bb = PatchBackbone(4, mode="mean")
    # image with constant patches: token (r, c) has value 10*r + c in every channel
    tokens = torch.tensor([[0.0, 1.0], [10.0, 11.0]])
    image = tokens.repeat_interleave(4, 0).repeat_interleave(4, 1).expand(1, 3, 8, 8).contiguous()
    sr = srt.StochasticResonance(bb, level=1, samples=1, seed=0)
    sr.shift_set = srt.ShiftSet(torch.tensor([[1, -1]]), 1, "hand")  # content down 1, left 1
    out = sr(image)["tokens"][0, 0]
    # shifted image: rows move down 1 (row 0 zero-filled), columns left 1 (last column zero-filled).
    # Its tokens (patch means): T(0,0) = (3 rows of 0 + 0 fill row) ... computed directly:
    shifted = translate(image, 1, -1)[0, 0]
    F_t = F.avg_pool2d(shifted[None, None], 4)[0, 0]
    a, c, p = 1, 1, 4
    expected = torch.zeros(2, 2)
    for R in range(2):
        for C in range(2):
            v = (p - a) * (p - c) * F_t[R, C]
            if R + 1 < 2:
                v += a * (p - c) * F_t[R + 1, C]  # down shift: the next row's token
            if C - 1 >= 0:
                v += (p - a) * c * F_t[R, C - 1]  # left shift: the previous column's token
            if R + 1 < 2 and C - 1 >= 0:
                v += a * c * F_t[R + 1, C - 1]
            expected[R, C] = v / p**2
    torch.testing.assert_close(out, expected)
    # and a hand value: F_t(0,0) = mean of shifted[0:4,0:4] = (0 fill row + 3 rows of token 0 values [1,..])
    assert F_t[0, 0] == pytest.approx(shifted[0:4, 0:4].mean().item())


def test_median_and_dispersion_equal_brute_force():
    bb = PatchBackbone(8)
    images = torch.randn(1, 3, 24, 32, generator=torch.Generator().manual_seed(2))
    for border in ("official", "normalized"):
        sr = srt.StochasticResonance(bb, level=2, border=border, dispersion=True, aggregate="median")
        shifts = list(sr.shift_set)
        stack, masks = aligned_stack([bb(translate(images, dy, dx))["tokens"] for dy, dx in shifts], shifts, 8)
        out = sr.dense(images, stride=1)
        if border == "official":
            med_ref = stack.median(0).values
            var_ref = stack.var(0, unbiased=False)
        else:
            masked = torch.where(masks > 0, stack, torch.full_like(stack, float("nan")))
            med_ref = masked.nanmedian(0).values
            mean = masked.nansum(0) / masks.sum(0)
            var_ref = ((torch.nan_to_num(masked - mean) ** 2).sum(0)) / masks.sum(0)
        torch.testing.assert_close(out["tokens"], med_ref, atol=1e-6, rtol=0)
        torch.testing.assert_close(out["tokens_var"], var_ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out["tokens_dispersion"], var_ref.mean(1, keepdim=True), atol=1e-5, rtol=1e-4)
    # pooled dispersion (official): variance over passes of each pass's pooled aligned map
    sr = srt.StochasticResonance(bb, level=2, dispersion=True)
    shifts = list(sr.shift_set)
    stack, _ = aligned_stack([bb(translate(images, dy, dx))["tokens"] for dy, dx in shifts], shifts, 8)
    pooled_stack = torch.stack([F.avg_pool2d(s, 8) for s in stack])
    out = sr(images)
    torch.testing.assert_close(out["tokens_var"], pooled_stack.var(0, unbiased=False), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["tokens"], pooled_stack.mean(0), atol=1e-5, rtol=0)


def test_median_over_budget_is_a_clear_error():
    bb = PatchBackbone(8)
    sr = srt.StochasticResonance(bb, level=3, aggregate="median", median_budget_gb=1e-6)
    with pytest.raises(MemoryError, match="median_budget_gb"):
        sr.dense(torch.randn(1, 3, 64, 64), stride=1)


def test_naive_reference_route_equals_brute_force():
    """srt.reference.naive_srt (the bench's baseline) computes the same thing, so the bench compares like with like."""
    from srt.reference import naive_srt

    bb = PatchBackbone(8)
    images = torch.randn(2, 3, 24, 40)
    sr = srt.StochasticResonance(bb, level=3)
    ref = brute_force(bb, images, list(sr.shift_set))
    for stride in (1, 4, 8):
        torch.testing.assert_close(
            naive_srt(bb, images, sr.shift_set, stride, batch_size=10), pool(ref, stride), atol=1e-5, rtol=0
        )
