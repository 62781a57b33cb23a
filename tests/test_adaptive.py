"""Adaptive SRT (srt.tolerance): the balanced shift order, the stopping rule, its estimator, and exactness."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import srt
from srt.aggregate import Welford, relative_standard_error
from srt.shifts import balanced_order, grid_shifts

SIZE, CENTRE, P = 16, 8, 8  # synthetic images: 16 x 16, "patch" 8, one marker pixel at (8, 8)


@pytest.fixture(scope="module")
def tiny_bb(tiny_kwargs):
    return srt.load_backbone("dino_vits16", pretrained=False, outputs=("tokens", "cls"), **tiny_kwargs)


def marker_images(scales: list[float]) -> torch.Tensor:
    """Channel 0: one bright pixel at the centre (a pass can read its shift from where it went);
    channel 1: the image's scale factor everywhere."""
    x = torch.zeros(len(scales), 3, SIZE, SIZE)
    x[:, 0, CENTRE, CENTRE] = 1.0
    x[:, 1] = torch.tensor(scales).view(-1, 1, 1)
    return x


class ShiftTable:
    """A callable whose output for the pass shifted by (dy, dx) is mean + scale * table[(dy, dx)]: its values
    over the shift set, hence their variance, are known exactly."""

    def __init__(self, level: int, dims: int, seed: int, mean: float = 10.0, grid: bool = False):
        g = torch.Generator().manual_seed(seed)
        self.table = {s: torch.randn(dims, generator=g) for s in map(tuple, grid_shifts(level).tolist())}
        self.mean, self.grid, self.patch_size = mean, grid, P

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        where = x[:, 0].flatten(1).argmax(1)
        out = []
        for b in range(x.shape[0]):
            shift = (int(where[b]) // SIZE - CENTRE, int(where[b]) % SIZE - CENTRE)
            out.append(self.mean + x[b, 1].max() * self.table[shift])  # max: zero fill enters at the edges
        values = torch.stack(out)
        result = {"cls": values}
        if self.grid:  # a token grid too, so the aligned-grid path is exercised
            result["tokens"] = values[:, :, None, None].expand(-1, -1, SIZE // P, SIZE // P).contiguous()
        return result

    def values(self, shifts: torch.Tensor, scale: float) -> np.ndarray:
        """[T, dims]: the outputs of the passes in the order of ``shifts``."""
        return np.stack([(self.mean + scale * self.table[tuple(s)]).numpy() for s in shifts.tolist()]).astype(
            np.float64
        )


def expected_stop(values: np.ndarray, eps: float, min_passes: int, check_every: int) -> int:
    """The stopping rule computed independently: first check point n whose ||SE||_2 / ||mean||_2 < eps, with
    SE^2 = s^2 / n * (N - n) / N (sample variance, ddof 1); N if none."""
    N = len(values)
    n = min_passes
    while n < N:
        prefix = values[:n]
        se2 = prefix.var(axis=0, ddof=1) / n * (N - n) / N
        if np.sqrt(se2.sum()) / np.linalg.norm(prefix.mean(0)) < eps:
            return n
        n += check_every
    return N


# ----------------------------------------------------------------------------------------------
# The order


@pytest.mark.parametrize(("level", "step"), [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 2), (7, 2), (6, 1)])
def test_every_prefix_of_the_order_is_balanced(level, step):
    order = balanced_order(level, step)
    side = 2 * (level // step) + 1
    assert sorted(order.tolist()) == list(range(side * side))  # every shift exactly once
    assert grid_shifts(level, step)[order[0]].tolist() == [0, 0]  # the unshifted pass first
    rows, cols = np.zeros(side, int), np.zeros(side, int)
    for k in order.tolist():
        rows[k // side] += 1
        cols[k % side] += 1
        assert rows.max() - rows.min() <= 1 and cols.max() - cols.min() <= 1


def test_srt_takes_the_whole_grid_in_the_balanced_order(tiny_bb):
    sr = srt.StochasticResonance(tiny_bb, level=3)
    assert torch.equal(sr.shift_set.shifts, grid_shifts(3)[balanced_order(3)])
    parity = srt.StochasticResonance(tiny_bb, level=3, official_parity=True)
    assert parity.shift_set.shifts[:2].tolist() == [[0, 0], [0, 0]] and len(parity.shift_set) == 50


# ----------------------------------------------------------------------------------------------
# Exactness


@pytest.mark.parametrize(
    "settings",
    [
        {"level": 2, "dispersion": True},
        {"level": 1, "output": "dense", "stride": 4},
        {"level": 1, "at_block": 0},
        {"level": 1, "official_parity": True},
    ],
    ids=["pooled", "dense", "at_block", "parity"],
)
def test_tolerance_zero_is_the_full_ensemble_exactly(tiny_bb, settings):
    """tolerance=0 runs the adaptive rounds and checks but never stops: bit for bit the full ensemble. With
    batch_size=1 both paths make the same forward calls, so this holds whatever the BLAS does with batches."""
    x = torch.randn(2, 3, 32, 32)
    full = srt.StochasticResonance(tiny_bb, batch_size=1, **settings)
    adaptive = srt.StochasticResonance(tiny_bb, batch_size=1, tolerance=0.0, min_passes=3, check_every=2, **settings)
    a, b = full(x), adaptive(x)
    assert adaptive.last_passes == [full.passes] * 2
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_stopped_image_is_the_mean_of_its_prefix(tiny_bb):
    x = torch.randn(1, 3, 32, 48)
    sr = srt.StochasticResonance(tiny_bb, level=3, tolerance=1e9, min_passes=5, batch_size=1)
    out = sr(x)
    assert sr.last_passes == [5]
    prefix = srt.StochasticResonance(tiny_bb, level=3, batch_size=1)
    prefix.shift_set = srt.ShiftSet(sr.shift_set.shifts[:5], 3, "first 5")
    for k, v in prefix(x).items():
        torch.testing.assert_close(out[k], v, atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Stopping


@pytest.mark.parametrize(("min_passes", "check_every"), [(2, 1), (8, 4), (5, 3)])
def test_outputs_constant_over_shifts_stop_after_min_passes(min_passes, check_every):
    fn = lambda x: {"cls": torch.ones(x.shape[0], 4) * 3.0}  # noqa: E731
    sr = srt.StochasticResonance(fn, 3, P, tolerance=1e-6, min_passes=min_passes, check_every=check_every)
    out = sr(marker_images([1.0, 2.0]))
    assert sr.last_passes == [min_passes, min_passes]
    assert torch.equal(out["cls"], torch.full((2, 4), 3.0))


@pytest.mark.parametrize("norm_eps", [0.002, 0.005, 0.01, 0.03])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_known_per_shift_variance_stops_where_the_bound_says(seed, norm_eps):
    fn = ShiftTable(level=3, dims=6, seed=seed)
    scales = [0.05, 0.3, 1.0]
    sr = srt.StochasticResonance(fn, 3, P, tolerance=norm_eps, min_passes=6, check_every=3)
    out = sr(marker_images(scales))
    for b, scale in enumerate(scales):
        values = fn.values(sr.shift_set.shifts, scale)
        n = expected_stop(values, norm_eps, 6, 3)
        assert sr.last_passes[b] == n, (b, scale)
        np.testing.assert_allclose(out["cls"][b].numpy(), values[:n].mean(0), rtol=1e-5)


def test_grid_and_p99_norms_by_hand():
    """The two error measures on known passes: 2 of 16 locations vary over the passes, the rest do not. The
    whole-grid norm averages the two away, the 99th percentile over locations reports them."""
    n, N = 6, 25
    g = torch.Generator().manual_seed(0)
    passes = torch.full((n, 1, 3, 4, 4), 10.0)  # [pass, image, C, h, w]
    passes[:, :, :, 0, :2] += torch.randn(n, 1, 3, 2, generator=g)
    welford = Welford((1, 3, 4, 4))
    for v in passes:
        welford.add(v.clone(), torch.ones(4, 4), slice(0, 1))
    se = (passes.var(0, unbiased=True) / n * (N - n) / N).sqrt()[0]  # [C, h, w]
    mean = passes.mean(0)[0]
    grid = relative_standard_error(welford, torch.tensor([0]), n, N, "grid")
    torch.testing.assert_close(grid, (se.norm() / mean.norm()).view(1), rtol=1e-4, atol=0)
    per_location = (se.norm(dim=0) / mean.norm(dim=0)).flatten()
    p99 = relative_standard_error(welford, torch.tensor([0]), n, N, "p99")
    ranked = per_location.sort().values  # 99th percentile of 16 values: between the two largest
    torch.testing.assert_close(p99, (ranked[14] + 0.85 * (ranked[15] - ranked[14])).view(1), rtol=1e-4, atol=0)
    assert p99.item() > 2.5 * grid.item()


def test_the_estimator_covers_the_truth_at_its_nominal_rate():
    """Intervals mean +- 1.96 SE (estimated, with the finite-population correction) contain the mean of the whole
    set (the truth) as often as Student's t with n - 1 degrees of freedom says (for a normal population), over
    600 seeds, for short and long prefixes; without the correction the long prefix would be far too wide."""
    from scipy.stats import t as student

    N, seeds = 49, 600
    shifts = grid_shifts(3)[balanced_order(3)]
    for n in (8, 20, 40):
        hits = hits_uncorrected = 0
        for seed in range(seeds):
            values = ShiftTable(level=3, dims=1, seed=1000 + seed).values(shifts, 1.0)  # iid N(10, 1) population
            welford = Welford((1, 1, 1, 1))
            for v in values[:n]:
                welford.add(torch.tensor(v, dtype=torch.float32).view(1, 1, 1, 1), torch.ones(1, 1), slice(0, 1))
            se = float(relative_standard_error(welford, torch.tensor([0]), n, N)) * abs(values[:n].mean())
            error = abs(values[:n].mean() - values.mean())
            hits += error <= 1.96 * se
            hits_uncorrected += error <= 1.96 * se / np.sqrt((N - n) / N)
        nominal = 2 * student.cdf(1.96, n - 1) - 1
        assert abs(hits / seeds - nominal) <= 0.03, (n, hits / seeds, nominal)  # 3.3 binomial SDs
    assert hits_uncorrected / seeds > 0.995  # n=40 of 49: the uncorrected SE is 2.3x too large
    assert relative_standard_error(welford, torch.tensor([0]), N, N).item() == 0.0  # the whole set: no error


def test_per_image_stopping_in_a_batch_equals_each_image_alone():
    fn = ShiftTable(level=3, dims=5, seed=7, grid=True)
    scales = [0.1, 5.0, 1.0, 2.5]
    kw = dict(tolerance=0.05, min_passes=4, check_every=3, batch_size=5)  # stops at 16, 37, 19, 28 passes
    batch = srt.StochasticResonance(fn, 3, P, **kw)
    together = batch(marker_images(scales))
    assert len(set(batch.last_passes)) >= 3  # the images really stop at different passes
    for b, scale in enumerate(scales):
        alone = srt.StochasticResonance(fn, 3, P, **kw)
        out = alone(marker_images([scale]))
        assert alone.last_passes == [batch.last_passes[b]]
        for k, v in out.items():
            assert torch.equal(together[k][b : b + 1], v), (k, b)


# ----------------------------------------------------------------------------------------------
# Records, settings


def test_passes_used_and_cost_sum_up_every_call():
    fn = ShiftTable(level=3, dims=5, seed=7)
    sr = srt.StochasticResonance(fn, 3, P, tolerance=0.01, min_passes=4, check_every=3)
    assert sr.cost() == {"passes_expected": None, "passes_worst": 49, "images_seen": None}
    sr(marker_images([0.02, 1.0]))
    first = list(sr.last_passes)
    sr(marker_images([0.2]))
    every = first + sr.last_passes
    used = sr.passes_used()
    assert (used["min"], used["max"], used["images"], used["full"]) == (min(every), max(every), 3, 49)
    assert used["mean"] == pytest.approx(sum(every) / 3, abs=1e-3)
    assert used["order"] == sr.shift_set.shifts.tolist()
    assert sr.cost()["passes_expected"] == used["mean"]
    full = srt.StochasticResonance(fn, 3, P)
    assert full.cost()["passes_expected"] == 49 and full.passes_used() is None


def test_config_object_and_keywords_are_the_same_extractor(tiny_bb):
    cfg = srt.SRTConfig(level=2, tolerance=0.05, check_every=2, dispersion=True)
    a = srt.StochasticResonance(tiny_bb, config=cfg)
    b = srt.StochasticResonance(tiny_bb, level=2, tolerance=0.05, check_every=2, dispersion=True)
    assert a.config == b.config and a.stopping == b.stopping
    c = srt.StochasticResonance(tiny_bb, config=cfg, level=1)  # keywords override the config
    assert c.level == 1 and c.config.tolerance == 0.05
    with pytest.raises(TypeError, match="unknown settings"):
        srt.StochasticResonance(tiny_bb, tolerence=0.1)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"tolerance": -0.1}, "tolerance=-0.1 is not valid"),
        ({"tolerance": 0.1, "samples": 9}, "cannot be combined with samples=9"),
        ({"tolerance": 0.1, "border": "normalized"}, "cannot be combined with border=normalized"),
        ({"tolerance": 0.1, "aggregate": "median"}, "cannot be combined with aggregate=median"),
        ({"min_passes": 1}, "min_passes=1 is not valid"),
        ({"check_every": 0}, "check_every=0 is not valid"),
        ({"tolerance_norm": "max"}, "tolerance_norm='max' is not valid"),
    ],
)
def test_bad_adaptive_settings_are_named(settings, message):
    with pytest.raises(srt.UserError, match=message):
        srt.SRTConfig(**settings).validate(patch_size=16)
    with pytest.raises(srt.UserError, match=r"srt\.(tolerance|min_passes|check_every)"):
        srt.SRTConfig(**settings).validate(patch_size=16, group="srt")


def test_a_run_records_the_passes_its_images_took(tmp_path):
    """srt.tolerance through the runner: metrics.json, the summary line and the table row say the passes used."""
    import json
    import sys
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo))
    from eval import tables
    from tasks.runner import execute

    overrides = [
        "task=toy",
        "task.n_images=3",
        "task.image_size=32",
        "progress=false",
        "device=cpu",
        f"paths.results_root={tmp_path}",
        "backbone.pretrained=false",
        "backbone.model_kwargs={depth:2,embed_dim:64,num_heads:2}",
        "srt.level=1",
        "srt.tolerance=1e9",  # every image stops at the first check
        "srt.min_passes=2",
    ]
    with initialize_config_dir(config_dir=str(repo / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    record = execute(cfg)
    data = json.loads((Path(record.run_dir) / "metrics.json").read_text())
    assert data["passes"] == 9
    used = data["passes_used"]
    # the toy task extracts each of its 3 images twice (as it is and flipped): 6 extractions
    assert (used["mean"], used["min"], used["max"], used["images"], used["full"]) == (2, 2, 2, 6, 9)
    assert "passes=mean 2.0 (2-2 of 9)" in record.summary_line()
    frame, _ = tables.load_results(tmp_path)
    (settings,) = set(frame["settings"])
    assert "srt.min_passes=2, srt.tolerance=1000000000.0" in settings and settings.endswith(", mean passes=2.0/9")
