"""TokenCut's normalised cut: planted structures, a brute-force solve, dense/sparse agreement, boxes, errors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch

from tasks.tokencut import (
    DENSE_MAX_TOKENS,
    NCutResult,
    TokenCutConfig,
    component_box,
    degeneration,
    dense_graph,
    key_grid,
    ncut,
    resolve_solver,
    seed_norm_ratio,
    sparse_graph,
    unit_tokens,
    warn_if_degenerate,
)


def planted(
    h: int, w: int, regions: list[np.ndarray], channels: int = 32, noise: float = 0.3, seed: int = 0
) -> np.ndarray:
    """[C, h, w] features: background and each region get orthogonal base vectors, plus Gaussian noise.

    The cosine between two tokens of one group is ~0.9 and across groups ~0, so with tau=0.2 the graph is
    exactly one clique per group (plus eps edges)."""
    rng = np.random.default_rng(seed)
    label = np.zeros((h, w), dtype=int)
    for k, region in enumerate(regions, start=1):
        label[region] = k
    bases = 3.0 * np.eye(channels)[: len(regions) + 1]
    feats = bases[label] + noise * rng.standard_normal((h, w, channels))
    return feats.transpose(2, 0, 1).astype(np.float32)


def block(h: int, w: int, rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[rows, cols] = True
    return mask


def brute_force_fiedler(feats: np.ndarray, tau: float, eps: float, binary_graph: bool) -> np.ndarray:
    """Graph built entry by entry from the definition; eigenvector from the symmetric normalised Laplacian."""
    c = feats.shape[0]
    x = feats.reshape(c, -1).T.astype(np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(x)
    weights = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            cos = float(x[i] @ x[j])
            if binary_graph:
                weights[i, j] = 1.0 if cos > tau else eps
            else:
                weights[i, j] = cos if cos >= tau else eps
    degree = weights.sum(axis=1)
    laplacian = np.eye(n) - weights / np.sqrt(np.outer(degree, degree))
    _, vectors = np.linalg.eigh(laplacian)
    return vectors[:, 1] / np.sqrt(degree)  # v = D^-1/2 y has v^T D v = 1


@pytest.mark.parametrize("solver", ["dense", "sparse"])
def test_planted_block_is_recovered_exactly(solver):
    h, w = 9, 13  # non-square: a transposed h/w would misplace the block
    truth = block(h, w, slice(2, 6), slice(7, 12))
    result = ncut(torch.from_numpy(planted(h, w, [truth])), solver=solver)
    assert isinstance(result, NCutResult)
    np.testing.assert_array_equal(result.component, truth)
    np.testing.assert_array_equal(result.bipartition, truth)
    assert truth[result.seed]
    assert result.eigvec[result.seed] > result.eigvec.mean()  # flipped so that the seed is foreground
    assert result.eigvec.shape == (h, w)


def test_component_keeps_only_the_seed_4_connected_part():
    h, w = 8, 8
    first = block(h, w, slice(0, 3), slice(0, 3))
    second = block(h, w, slice(3, 6), slice(3, 6))  # touches `first` only diagonally at (2,2)-(3,3)
    both = first | second
    assert scipy.ndimage.label(both, structure=np.ones((3, 3)))[1] == 1  # one piece under 8-connectivity
    result = ncut(planted(h, w, [both]))
    np.testing.assert_array_equal(result.bipartition, both)
    expected = first if first[result.seed] else second
    np.testing.assert_array_equal(result.component, expected)


@pytest.mark.parametrize("binary_graph", [True, False])
@pytest.mark.parametrize("solver", ["dense", "sparse"])
def test_eigenvector_matches_brute_force(binary_graph, solver):
    feats = planted(5, 7, [block(5, 7, slice(1, 3), slice(2, 5))], channels=8, noise=0.8, seed=3)
    result = ncut(feats, tau=0.2, eps=1e-5, binary_graph=binary_graph, solver=solver)
    expected = brute_force_fiedler(feats, 0.2, 1e-5, binary_graph).reshape(5, 7)
    sign = np.sign(expected.ravel() @ result.eigvec.ravel())
    np.testing.assert_allclose(result.eigvec, sign * expected, atol=1e-6)


def test_threshold_semantics_follow_the_reference():
    # cos = 0.5 exactly between the two unit tokens; tau = 0.5
    tokens = np.array([[1.0, 0.0], [0.5, np.sqrt(3) / 2]], dtype=np.float32)
    tokens = tokens / np.linalg.norm(tokens, axis=1, keepdims=True)
    cos = float(tokens[0] @ tokens[1])
    binary = dense_graph(tokens, tau=cos, eps=1e-5, binary_graph=True)
    weighted = dense_graph(tokens, tau=cos, eps=1e-5, binary_graph=False)
    np.testing.assert_array_equal(binary, [[1.0, 1e-5], [1e-5, 1.0]])  # binary: strict `cos > tau`
    np.testing.assert_allclose(weighted, [[1.0, cos], [cos, 1.0]], rtol=1e-7)  # non-binary keeps `cos >= tau`


def clustered(h: int, w: int, shared: float, seed: int, k: int = 5) -> np.ndarray:
    """k noisy clusters on a coarse 4x4 layout; `shared` adds a common offset that raises every cosine."""
    rng = np.random.default_rng(seed)
    label = scipy.ndimage.zoom(rng.integers(0, k, size=(4, 4)), (h / 4, w / 4), order=0)
    centres = 1.5 * rng.standard_normal((k, 24))
    feats = centres[label] + rng.standard_normal((h, w, 24)) + shared
    return feats.transpose(2, 0, 1)


@pytest.mark.parametrize(
    "shared, binary_graph, stores_non_edges",
    [
        (0.0, True, False),
        (1.2, True, True),
        (0.0, False, False),
        (1.2, False, False),
    ],
)
def test_sparse_graph_is_the_dense_graph_and_solvers_agree(shared, binary_graph, stores_non_edges):
    feats = clustered(18, 22, shared, seed=1)
    tokens = unit_tokens(feats)
    graph = sparse_graph(tokens, 0.2, 1e-5, binary_graph)
    edge_density = np.mean(tokens @ tokens.T > 0.2)
    assert 0.2 < edge_density < 0.8  # a non-trivial graph (a complete graph has a degenerate eigenproblem)
    assert (graph.constant == 1.0) is stores_non_edges  # both storage branches are exercised
    if binary_graph:
        assert graph.correction.nnz <= len(tokens) ** 2 // 2
    np.testing.assert_allclose(graph.toarray(), dense_graph(tokens, 0.2, 1e-5, binary_graph), rtol=0, atol=1e-12)
    dense = ncut(feats, binary_graph=binary_graph, solver="dense")
    sparse = ncut(feats, binary_graph=binary_graph, solver="sparse")
    np.testing.assert_allclose(sparse.eigvec, dense.eigvec, atol=1e-7)
    np.testing.assert_array_equal(sparse.bipartition, dense.bipartition)
    np.testing.assert_array_equal(sparse.component, dense.component)
    assert sparse.seed == dense.seed


def test_auto_solver_switches_on_token_count():
    assert resolve_solver("auto", DENSE_MAX_TOKENS) == "dense"
    assert resolve_solver("auto", DENSE_MAX_TOKENS + 1) == "sparse"
    assert resolve_solver("dense", 10**6) == "dense"


def test_component_box_hand_cases():
    comp = np.zeros((4, 6), dtype=bool)
    comp[1:3, 3:5] = True  # rows 1-2, cols 3-4
    assert component_box(comp, 16, (64, 96)) == (48, 16, 80, 48)
    # a component on the last padded row/column is clipped to the unpadded image (100 x 90 padded to 112 x 96)
    edge = np.zeros((7, 6), dtype=bool)
    edge[5:7, 4:6] = True
    assert component_box(edge, 16, (100, 90)) == (64, 80, 90, 100)
    assert component_box(comp, 8, (32, 48)) == (24, 8, 40, 24)  # dense grid: 8 px cells
    with pytest.raises(ValueError, match="non-empty"):
        component_box(np.zeros((3, 3), dtype=bool), 16, (48, 48))


def test_bad_inputs_raise_clear_errors():
    feats = np.random.default_rng(0).standard_normal((8, 4, 4))
    with pytest.raises(ValueError, match=r"\[C, h, w\]"):
        ncut(feats[0])
    with pytest.raises(ValueError, match="solver='fast'"):
        ncut(feats, solver="fast")
    with pytest.raises(ValueError, match="tau=1.0"):
        ncut(feats, tau=1.0)
    with pytest.raises(ValueError, match="eps=0"):
        ncut(feats, eps=0)
    with pytest.raises(ValueError, match="at least 4 tokens"):
        ncut(feats[:, :1, :3], solver="sparse")
    with pytest.raises(ValueError, match="task.grid='fine'"):
        TokenCutConfig(grid="fine").validate()
    with pytest.raises(ValueError, match="task.solver"):
        TokenCutConfig(solver="lobpcg").validate()


class _Extractor:
    """Minimal extractor: keys = 2x2 average-pooled pixels (stride 2), optionally with a dense field."""

    patch_size = stride = 2
    name = "pool2"

    def __call__(self, images):
        return {"keys": torch.nn.functional.avg_pool2d(images, 2)}


class _DenseExtractor(_Extractor):
    def dense(self, images, stride):
        self.asked = stride
        return {"keys": torch.nn.functional.avg_pool2d(images, stride)}


def test_key_grid_token_and_dense():
    images = torch.rand(1, 3, 8, 8)
    keys, stride = key_grid(_Extractor(), images, "token")
    assert keys.shape == (1, 3, 4, 4) and stride == 2
    with pytest.raises(ValueError, match="task.grid=dense needs an SRT extractor"):
        key_grid(_Extractor(), images, "dense")
    extractor = _DenseExtractor()
    keys, stride = key_grid(extractor, images, "dense")
    assert extractor.asked == 1 and stride == 1 and keys.shape == (1, 3, 8, 8)  # default: patch_size // 2
    with pytest.raises(ValueError, match="divisor"):
        key_grid(extractor, images, "dense", dense_stride=3)


# ----------------------------------------------------------------------------------------------- degeneration


def shared_direction(h: int, w: int, seed: int, channels: int = 32, shared: float = 5.0) -> np.ndarray:
    """[C, h, w] keys dominated by one direction (as DINOv2's key bias): every pairwise cosine is > 0.2."""
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((channels, h, w))
    feats[0] += shared * np.sqrt(channels)
    return feats.astype(np.float32)


@pytest.mark.parametrize("solver", ["dense", "sparse"])
def test_edge_fraction_counts_the_graph_edges(solver):
    h, w = 6, 7
    truth = block(h, w, slice(1, 4), slice(2, 6))  # 12 of 42 tokens: two cliques, 12^2 + 30^2 edges
    feats = planted(h, w, [truth], noise=0.1)
    cut = ncut(feats, solver=solver)
    x = unit_tokens(feats)
    assert cut.edge_fraction == pytest.approx(np.count_nonzero(x @ x.T > 0.2) / 42**2)  # brute force
    assert cut.edge_fraction == pytest.approx((12**2 + 30**2) / 42**2)  # by hand
    assert ncut(shared_direction(h, w, 0), solver=solver).edge_fraction == 1.0


def test_complete_graphs_give_the_same_component_whatever_the_image():
    """The degenerate case: every key cosine > tau, so W = 1 1^T and the cut ignores the image."""
    cuts = [ncut(shared_direction(8, 10, seed)) for seed in range(4)]
    assert all(c.edge_fraction == 1.0 for c in cuts)
    assert all(np.array_equal(c.component, cuts[0].component) for c in cuts)
    report = degeneration([c.edge_fraction for c in cuts], [1.0] * 4, [c.component for c in cuts])
    assert report == {
        "complete_graph_fraction": 1.0,
        "high_norm_seed_fraction": 0.0,
        "repeated_component_fraction": 1.0,
        "degenerate": 1.0,
    }


def test_healthy_cuts_are_not_flagged():
    h, w = 8, 10
    regions = [block(h, w, slice(1, 4), slice(1, 5)), block(h, w, slice(4, 8), slice(5, 9)), block(h, w, 3, 3)]
    cuts = [ncut(planted(h, w, [r], seed=i)) for i, r in enumerate(regions)]
    for cut, region in zip(cuts, regions):
        np.testing.assert_array_equal(cut.component, region)
    report = degeneration([c.edge_fraction for c in cuts], [1.0, 1.2, 0.9], [c.component for c in cuts])
    assert report["degenerate"] == 0.0
    assert report["complete_graph_fraction"] == 0.0 and report["repeated_component_fraction"] == 0.0


def test_repeated_components_count_only_same_size_grids():
    a = np.zeros((4, 5), dtype=bool)
    a[1, 1:3] = True
    b = np.zeros((5, 4), dtype=bool)  # same cells set, other grid size: not a repeat
    b[1, 1:3] = True
    c = a.copy()
    c[3, 4] = True
    report = degeneration([0.5] * 4, [1.0] * 4, [a, a.copy(), b, c])
    assert report["repeated_component_fraction"] == 0.5  # the two copies of a
    assert report["degenerate"] == 0.0  # not more than half


def test_high_norm_seed():
    feats = np.ones((3, 4, 5), dtype=np.float32)  # every token has norm sqrt(3)
    feats[:, 2, 3] *= 5.0
    assert seed_norm_ratio(feats, (2, 3)) == pytest.approx(5.0)
    assert seed_norm_ratio(torch.from_numpy(feats), (0, 0)) == pytest.approx(1.0)
    comps = [block(4, 5, slice(0, 1), slice(i, i + 1)) for i in range(3)]
    assert degeneration([0.5] * 3, [5.0, 1.0, 1.0], comps)["degenerate"] == 0.0
    flagged = degeneration([0.5] * 3, [5.0, 2.0, 1.0], comps)
    assert flagged["high_norm_seed_fraction"] == pytest.approx(2 / 3) and flagged["degenerate"] == 1.0
    with pytest.raises(ValueError, match="one edge fraction"):
        degeneration([0.5], [1.0, 1.0], comps[:2])


def test_degenerate_runs_warn_and_report_it(tmp_path, caplog):
    """End to end on the saliency task: keys with one dominant direction give the flag and a warning."""
    from test_saliency import run_task, synthetic_dataset

    from tasks.saliency import SaliencyConfig

    class SharedDirectionKeys:
        patch_size = stride = 16
        mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        name, passes = "shared-direction-keys", 1

        def __call__(self, images):
            pooled = torch.nn.functional.avg_pool2d(images, 16)
            return {"keys": torch.cat([pooled + 50.0, pooled], dim=1)}  # a huge constant: every cosine ~ 1

    root = synthetic_dataset(tmp_path / "ECSSD", "ECSSD", [(96, 128), (96, 128), (112, 144)])
    with caplog.at_level("WARNING", logger="tasks.tokencut"):
        metrics, _ = run_task(SaliencyConfig(dataset="ECSSD", root=str(root)), SharedDirectionKeys(), tmp_path / "r")
    assert metrics["complete_graph_fraction"] == 1.0 and metrics["degenerate"] == 1.0
    assert metrics["repeated_component_fraction"] == pytest.approx(2 / 3)  # the two 96x128 images
    assert any("TokenCut degenerates with shared-direction-keys keys" in r.message for r in caplog.records)
    assert warn_if_degenerate({"degenerate": 0.0}, "x", 0.2) is None
