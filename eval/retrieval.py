"""Revisited Oxford / Paris retrieval metrics (revisitop's mAP and mP@k) and the ground-truth reader.

    python -m eval.retrieval --features run/features.npz --gnd data/revisitop/roxford5k/gnd_roxford5k.pkl

The conventions are revisitop's (rop:python/evaluate.py, identical in dino:utils.py; PROTOCOLS.md 2.4 and
its appendix), re-implemented here:

- ``ranks`` is ``[n_db, n_queries]``: column ``i`` lists database indices, best match first;
- junk is removed by moving each positive up by the number of junk items ranked strictly before it;
- AP is the trapezoid rule over the positives' junk-free 0-based ranks ``r_j``:
  ``sum_j ((j / r_j, or 1 when r_j = 0) + (j + 1) / (r_j + 1)) / 2 / n_ok``, ``n_ok = len(ok)``;
- mP@k uses ``kq = min(largest 1-based positive rank, k)`` and ``#(positive ranks <= kq) / kq``;
- a query without positives has AP = P@k = NaN and is left out of the means.

Two cases revisitop does not handle and that cannot occur with full rankings: when every query is
empty the means are NaN (revisitop divides by zero); when ``ranks`` is truncated and holds none of a
query's positives, its AP is 0 and its P@k 0 (revisitop fails on ``max`` of an empty list).

Protocols (rop:python/example_evaluate.py): Easy: ok = easy, junk = junk + hard; Medium: ok = easy + hard,
junk = junk; Hard: ok = hard, junk = junk + easy. Metrics are reported in percent, as in the papers.

The ground truth ``gnd_<dataset>.pkl`` is a pickle; :func:`read_gnd` loads it with an unpickler that
only builds built-in containers and numpy arrays (anything else raises :class:`UnsafePickleError`,
before it is constructed) and then checks its structure.

Cost: :func:`compute_map` is O(n_q n_db) (one membership test per ranked list);
:func:`rank_database` is O(n_db n_q d) for the similarities plus O(n_q n_db log n_db) for the sort.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import codecs
import io
import json
import pickle
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from srt.errors import MissingFileError, UserError, report_user_errors

KAPPAS = (1, 5, 10)
#: short name -> protocol
PROTOCOLS = {"E": "easy", "M": "medium", "H": "hard"}
GND_KEYS = ("easy", "hard", "junk")


# ----------------------------------------------------------------------------------------------
# Reading the ground truth safely


class UnsafePickleError(UserError):
    """A pickle asks for a class or function outside the allow-list (or for a persistent id)."""


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """What a pickle of built-in containers and numpy arrays may refer to, under the names numpy 1.x and 2.x
    pickle them with. The objects are taken from numpy's own reducers (no deprecated module imports)."""
    array = np.zeros(1)
    reconstruct = array.__reduce__()[0]  # numpy.(_)core.multiarray._reconstruct (protocols 0-4)
    frombuffer = array.__reduce_ex__(5)[0]  # numpy.(_)core.numeric._frombuffer (protocol 5)
    scalar = np.float64(0).__reduce__()[0]  # numpy.(_)core.multiarray.scalar (numpy scalars)
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    allowed[("_codecs", "encode")] = codecs.encode  # how protocol 2 writes bytes (numpy's raw data)
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, source: Path):
        super().__init__(io.BytesIO(data))
        self.source = source
        # the protocol, as pickle's own find_class uses it (protocols 0 and 1 have no PROTO opcode)
        self.protocol = data[1] if data[:1] == pickle.PROTO and len(data) > 1 else 0
        self.allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        if self.protocol < 3:  # Python 2 names (__builtin__, copy_reg ...), as pickle's own find_class maps them
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.source}: refused to load {module}.{name}; a revisitop ground-truth pickle may only hold "
                "built-in containers (dict, list, str, numbers) and numpy arrays"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: refused a persistent id {pid!r}; expected a plain data pickle")


def _indices(value: Any, where: str, n_db: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise UserError(f"{where}: expected a list of integer database indices, got {arr.dtype} {arr.shape}")
    outside = arr[(arr < 0) | (arr >= n_db)]
    if outside.size:
        raise UserError(f"{where}: index {int(outside[0])} is outside the database (0..{n_db - 1})")
    return arr.astype(np.int64)


def _names(value: Any, key: str, source: Path) -> list[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise UserError(f"{source}: '{key}' must be a list of image names (str), got {type(value).__name__}")
    bad = [v for v in value if not v or "/" in v or "\\" in v or v in (".", "..")]
    if bad:
        raise UserError(f"{source}: '{key}' holds {len(bad)} names that are not plain file names, e.g. {bad[0]!r}")
    return list(value)


def read_gnd(path: str | Path) -> dict[str, Any]:
    """The revisitop ground truth ``gnd_<dataset>.pkl``, read safely and checked.

    Returns ``{"imlist": [n_db names], "qimlist": [n_q names], "gnd": [n_q dicts]}`` where each query's dict
    has ``easy``, ``hard``, ``junk`` (int64 arrays of database indices) and ``bbx`` (float64 ``[x1, y1, x2, y2]``,
    or None when the file has none). Raises FileNotFoundError, :class:`UnsafePickleError` (disallowed types,
    nothing of them is constructed) or ValueError (not a pickle, or unexpected content), each naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"ground-truth file {path} does not exist")
    data = path.read_bytes()
    try:
        obj = _RestrictedUnpickler(data, path).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of a corrupt pickle is reported with the file name
        raise UserError(f"{path}: cannot read it as a pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, Mapping) or not {"imlist", "qimlist", "gnd"} <= set(obj):
        found = sorted(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
        raise UserError(f"{path}: expected a dict with keys imlist, qimlist and gnd; found {found}")
    imlist = _names(obj["imlist"], "imlist", path)
    qimlist = _names(obj["qimlist"], "qimlist", path)
    gnd_in = obj["gnd"]
    if not isinstance(gnd_in, (list, tuple)) or len(gnd_in) != len(qimlist):
        n = len(gnd_in) if isinstance(gnd_in, (list, tuple)) else type(gnd_in).__name__
        raise UserError(f"{path}: 'gnd' must be a list with one dict per query ({len(qimlist)}), found {n}")
    gnd = []
    for i, g in enumerate(gnd_in):
        where = f"{path}: gnd[{i}] (query {qimlist[i]})"
        if not isinstance(g, Mapping) or not set(GND_KEYS) <= set(g):
            found = sorted(map(str, g)) if isinstance(g, Mapping) else type(g).__name__
            raise UserError(f"{where}: expected a dict with keys {', '.join(GND_KEYS)} (and bbx); found {found}")
        entry = {k: _indices(g[k], f"{where} '{k}'", len(imlist)) for k in GND_KEYS}
        bbx = g.get("bbx")
        if bbx is not None:
            bbx = np.asarray(bbx)
            if bbx.shape != (4,) or bbx.dtype.kind not in "iuf" or not np.all(np.isfinite(bbx)):
                raise UserError(f"{where} 'bbx': expected 4 numbers [x1, y1, x2, y2], got {bbx!r}")
            bbx = bbx.astype(np.float64)
            if not (bbx[0] < bbx[2] and bbx[1] < bbx[3]):
                raise UserError(f"{where} 'bbx' {bbx.tolist()} is empty; expected x1 < x2 and y1 < y2")
        entry["bbx"] = bbx
        gnd.append(entry)
    return {"imlist": imlist, "qimlist": qimlist, "gnd": gnd}


def _missing_names(names: Sequence[str], known: Sequence[str], what: str) -> None:
    known_set = set(known)
    unknown = [n for n in names if n not in known_set]
    if unknown:
        raise UserError(f"{len(unknown)} of the {len(names)} {what} are not in the ground truth, e.g. {unknown[:5]}")
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise UserError(f"{n!r} appears more than once in the {what}")
        seen.add(n)


def restrict_gnd(
    gt: Mapping[str, Any], database: Optional[Sequence[str]] = None, queries: Optional[Sequence[str]] = None
) -> dict[str, Any]:
    """The ground truth of a subset: ``database`` / ``queries`` names (None = all), in the given order.

    Database indices are renumbered; positives and junk outside the subset are dropped (so a query may
    end up without positives, which then counts as empty). For quick checks only: the numbers of a subset
    are not comparable with the full benchmark's.
    """
    imlist, qimlist = list(gt["imlist"]), list(gt["qimlist"])
    database = imlist if database is None else list(database)
    queries = qimlist if queries is None else list(queries)
    _missing_names(database, imlist, "database images")
    _missing_names(queries, qimlist, "queries")
    old_index = {n: i for i, n in enumerate(imlist)}
    new_index = np.full(len(imlist), -1, dtype=np.int64)
    new_index[[old_index[n] for n in database]] = np.arange(len(database))
    qpos = {n: i for i, n in enumerate(qimlist)}
    gnd = []
    for name in queries:
        g = gt["gnd"][qpos[name]]
        entry = {k: new_index[g[k]][new_index[g[k]] >= 0] for k in GND_KEYS}
        entry["bbx"] = g.get("bbx")
        gnd.append(entry)
    return {"imlist": database, "qimlist": queries, "gnd": gnd}


# ----------------------------------------------------------------------------------------------
# Metrics


def protocol_gnd(gnd: Sequence[Mapping[str, Any]], protocol: str) -> list[dict[str, np.ndarray]]:
    """Per-query ``{"ok", "junk"}`` of a protocol (easy | medium | hard) from ``easy``/``hard``/``junk``."""
    if protocol not in PROTOCOLS.values():
        raise UserError(f"protocol {protocol!r} is not valid; expected one of {', '.join(PROTOCOLS.values())}")
    ok_keys, junk_keys = {
        "easy": (("easy",), ("junk", "hard")),
        "medium": (("easy", "hard"), ("junk",)),
        "hard": (("hard",), ("junk", "easy")),
    }[protocol]

    def cat(g: Mapping[str, Any], keys: tuple[str, ...]) -> np.ndarray:
        return np.concatenate([np.asarray(g[k], dtype=np.int64).reshape(-1) for k in keys])

    return [{"ok": cat(g, ok_keys), "junk": cat(g, junk_keys)} for g in gnd]


def compute_ap(ranks: np.ndarray, n_ok: int) -> float:
    """Trapezoid-rule AP from the sorted, junk-free, 0-based ranks of the positives found (revisitop)."""
    r = np.asarray(ranks, dtype=np.float64)
    j = np.arange(len(r), dtype=np.float64)
    precision_0 = np.where(r == 0, 1.0, j / np.where(r == 0, 1.0, r))
    precision_1 = (j + 1) / (r + 1)
    return float(np.sum((precision_0 + precision_1) / 2.0) / n_ok)


def compute_map(
    ranks: np.ndarray, gnd: Sequence[Mapping[str, Any]], kappas: Sequence[int] = KAPPAS
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """revisitop's ``compute_map``: ``(mAP, AP per query, mP@kappas, P@kappas per query)``, as fractions.

    ``ranks`` is ``[n_db, n_queries]`` (database indices, best first, per column); ``gnd[i]`` has ``ok``
    (positives) and optionally ``junk`` (indices ignored wherever they are ranked). See the module
    docstring for the exact conventions.
    """
    ranks = np.asarray(ranks)
    if ranks.ndim != 2 or ranks.dtype.kind not in "iu":
        raise UserError(f"ranks must be an integer array [n_db, n_queries]; got {ranks.dtype} {ranks.shape}")
    if ranks.shape[1] != len(gnd):
        raise UserError(
            f"ranks has {ranks.shape[1]} columns but the ground truth has {len(gnd)} queries; "
            "expected ranks of shape [n_db, n_queries] (revisitop's layout; transpose [n_queries, n_db] ranks)"
        )
    kappas = [int(k) for k in kappas]
    if any(k < 1 for k in kappas):
        raise UserError(f"kappas {kappas} are not valid; expected integers >= 1")
    nq = len(gnd)
    aps = np.zeros(nq)
    prs = np.zeros((nq, len(kappas)))
    for i, g in enumerate(gnd):
        ok = np.asarray(g["ok"]).reshape(-1)
        if ok.size == 0:
            aps[i], prs[i] = np.nan, np.nan
            continue
        junk = np.asarray(g.get("junk", ())).reshape(-1)
        pos = np.flatnonzero(np.isin(ranks[:, i], ok))
        junk_pos = np.flatnonzero(np.isin(ranks[:, i], junk))
        # each positive moves up by the number of junk items ranked strictly before it
        pos = pos - np.searchsorted(junk_pos, pos, side="left")
        aps[i] = compute_ap(pos, ok.size)
        if pos.size == 0:  # only possible with truncated ranks (revisitop fails here)
            prs[i] = 0.0
            continue
        pos1 = pos + 1
        for j, k in enumerate(kappas):
            kq = min(int(pos1.max()), k)
            prs[i, j] = np.count_nonzero(pos1 <= kq) / kq
    valid = ~np.isnan(aps)
    if not valid.any():
        return float("nan"), aps, np.full(len(kappas), np.nan), prs
    return float(aps[valid].mean()), aps, prs[valid].mean(axis=0), prs


# ----------------------------------------------------------------------------------------------
# Ranking and scoring


def rank_database(database: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Ranks ``[n_db, n_q]`` (int64) by cosine similarity: both sets L2-normalised, ``S = X Q^T``, sorted per
    column by decreasing similarity (stable, so ties keep database order)."""
    X, Q = np.asarray(database, dtype=np.float64), np.asarray(queries, dtype=np.float64)
    if X.ndim != 2 or Q.ndim != 2 or X.shape[1] != Q.shape[1]:
        raise UserError(f"descriptors must be [n, d] with the same d; got database {X.shape}, queries {Q.shape}")
    if not (np.isfinite(X).all() and np.isfinite(Q).all()):
        raise UserError("descriptors contain NaN or inf")

    def normalise(a: np.ndarray) -> np.ndarray:
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)  # F.normalize's eps

    sim = normalise(X) @ normalise(Q).T
    return np.argsort(-sim, axis=0, kind="stable")


@dataclass
class RetrievalScores:
    """Flat metrics (percent) and per-query AP / P@k (percent, NaN for empty queries) per protocol."""

    metrics: dict[str, float]
    aps: dict[str, np.ndarray]  # protocol short name (E, M, H) -> [n_q]
    prs: dict[str, np.ndarray]  # protocol short name -> [n_q, len(kappas)]
    kappas: tuple[int, ...]

    def per_query_csv(self, queries: Sequence[str]) -> str:
        header = ["query"] + [f"AP_{p}" for p in PROTOCOLS] + [f"P@{k}_{p}" for p in PROTOCOLS for k in self.kappas]
        lines = [",".join(header)]
        for i, name in enumerate(queries):
            values = [self.aps[p][i] for p in PROTOCOLS] + [
                self.prs[p][i, j] for p in PROTOCOLS for j in range(len(self.kappas))
            ]
            lines.append(",".join([name] + ["" if np.isnan(v) else f"{v:.6f}" for v in values]))
        return "\n".join(lines) + "\n"


def evaluate(ranks: np.ndarray, gnd: Sequence[Mapping[str, Any]], kappas: Sequence[int] = KAPPAS) -> RetrievalScores:
    """mAP and mP@k under the Easy, Medium and Hard protocols: ``mAP_E``, ``mAP_M``, ``mAP_H``, ``mP@k_E`` ...
    (percent), plus ``n_queries_E/M/H``: the queries with positives that each mean is over."""
    kappas = tuple(int(k) for k in kappas)
    metrics: dict[str, float] = {}
    aps, prs = {}, {}
    for short, protocol in PROTOCOLS.items():
        m, ap, pr, pr_q = compute_map(ranks, protocol_gnd(gnd, protocol), kappas)
        metrics[f"mAP_{short}"] = 100 * m
        for k, v in zip(kappas, pr):
            metrics[f"mP@{k}_{short}"] = 100 * float(v)
        metrics[f"n_queries_{short}"] = float(np.count_nonzero(~np.isnan(ap)))
        aps[short], prs[short] = 100 * ap, 100 * pr_q
    return RetrievalScores(metrics, aps, prs, kappas)


# ----------------------------------------------------------------------------------------------
# Command line: score saved descriptors


def read_features(path: str | Path) -> dict[str, Any]:
    """Descriptors saved by ``task=retrieval`` (``features.npz``): ``database`` [n_db, d], ``queries`` [n_q, d],
    and the image names ``imlist`` / ``qimlist`` (optional: without them the rows follow the gnd's lists)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"features file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except Exception as e:  # noqa: BLE001 - name the file whatever numpy raised
        raise UserError(f"cannot read features file {path} as .npz ({type(e).__name__}: {e})") from e
    missing = [k for k in ("database", "queries") if k not in data]
    if missing:
        raise UserError(f"features file {path} has no {missing}; found {sorted(data)} (expected database, queries)")
    return data


def score_features(
    features: Mapping[str, Any], gt: Mapping[str, Any], kappas: Sequence[int] = KAPPAS
) -> RetrievalScores:
    """Rank saved descriptors and score them against the (subset of the) ground truth their names give."""
    database = [str(n) for n in features["imlist"]] if "imlist" in features else None
    queries = [str(n) for n in features["qimlist"]] if "qimlist" in features else None
    sub = restrict_gnd(gt, database, queries)
    for key, names in (("database", sub["imlist"]), ("queries", sub["qimlist"])):
        if len(features[key]) != len(names):
            raise UserError(f"features '{key}' has {len(features[key])} rows but the ground truth lists {len(names)}")
    return evaluate(rank_database(features["database"], features["queries"]), sub["gnd"], kappas)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Score saved retrieval descriptors with revisitop's mAP / mP@k.")
    parser.add_argument("--features", required=True, type=Path, help="features.npz written by task=retrieval")
    parser.add_argument("--gnd", required=True, type=Path, help="gnd_<dataset>.pkl (revisitop)")
    parser.add_argument("--kappas", type=int, nargs="+", default=list(KAPPAS), help="k of mP@k (default 1 5 10)")
    args = parser.parse_args(argv)
    scores = score_features(read_features(args.features), read_gnd(args.gnd), args.kappas)
    clean = {k: (None if np.isnan(v) else round(v, 6)) for k, v in scores.metrics.items()}
    print(json.dumps(clean, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(report_user_errors(main, prog="python -m eval.retrieval"))
