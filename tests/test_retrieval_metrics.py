"""revisitop mAP / mP@k (hand-computed cases and a loop-by-loop transcription of revisitop's algorithm on random
rankings), the protocols, ranking, the safe ground-truth reader (real gnd_roxford5k.pkl, malicious pickles) and
the ``python -m eval.retrieval`` command line."""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
from pathlib import Path

import numpy as np
import pytest

from eval import retrieval as R

NAN = float("nan")


def real_gnd_path(fixtures_dir: Path) -> Path:
    return fixtures_dir / "roxford" / "roxford5k" / "gnd_roxford5k.pkl"


# ----------------------------------------------------------------------------------------------- hand cases


def column(*order: int) -> np.ndarray:
    """ranks for one query: database indices best first, as a [n_db, 1] column."""
    return np.array(order)[:, None]


def test_ap_and_precision_with_junk_by_hand():
    # ranked: 3 0 5 1 2 4; positives 0 (rank 1) and 1 (rank 3); junk 5 (rank 2) moves positive 1 up to rank 2
    # AP = [(0/1 + 1/2)/2 + (1/2 + 2/3)/2] / 2 = (1/4 + 7/12) / 2 = 5/12
    # 1-based positive ranks 2, 3: P@1 = 0/1 (kq=1), P@5 = 2/3 (kq = min(3, 5) = 3), P@10 = 2/3
    m, aps, pr, prs = R.compute_map(column(3, 0, 5, 1, 2, 4), [{"ok": [0, 1], "junk": [5]}], (1, 5, 10))
    assert m == pytest.approx(5 / 12) and aps[0] == pytest.approx(5 / 12)
    np.testing.assert_allclose(prs[0], [0, 2 / 3, 2 / 3])
    np.testing.assert_allclose(pr, [0, 2 / 3, 2 / 3])


def test_first_rank_positive_and_kq_shrinks_below_k():
    # a single positive ranked first: AP = (1 + 1)/2 = 1; kq = min(1, k) = 1 so P@k = 1 for every k
    m, _, pr, _ = R.compute_map(column(2, 0, 1), [{"ok": [2], "junk": []}])
    assert m == 1.0 and list(pr) == [1.0, 1.0, 1.0]
    # plain precision@5 would be 2/5 here; revisitop's kq = min(2, 5) = 2 gives 2/2
    _, _, pr, _ = R.compute_map(column(0, 1, 2, 3, 4, 5), [{"ok": [0, 1]}], (5,))
    assert pr[0] == 1.0


def test_junk_ranked_after_the_positives_changes_nothing():
    base = R.compute_map(column(0, 4, 1, 3, 2), [{"ok": [0, 1]}])
    with_junk = R.compute_map(column(0, 4, 1, 3, 2), [{"ok": [0, 1], "junk": [2, 3]}])
    assert base[0] == with_junk[0] == pytest.approx((1 + (1 / 2 + 2 / 3) / 2) / 2)


def test_empty_queries_are_nan_and_left_out_of_the_means():
    ranks = np.array([[0, 0, 1], [1, 1, 0]])  # 2 db images, 3 queries
    gnd = [{"ok": [0]}, {"ok": [], "junk": [0]}, {"ok": [1], "junk": []}]
    m, aps, pr, prs = R.compute_map(ranks, gnd, (1,))
    assert np.isnan(aps[1]) and np.isnan(prs[1]).all()
    assert aps[0] == aps[2] == 1.0 and m == 1.0 and pr[0] == 1.0
    m, aps, pr, _ = R.compute_map(ranks, [{"ok": []}] * 3, (1,))
    assert np.isnan(m) and np.isnan(pr).all() and np.isnan(aps).all()


def test_positives_missing_from_truncated_ranks_still_count_in_the_denominator():
    # top-2 lists only: positive 0 found at rank 1, positive 7 never ranked -> AP = (0/1 + 1/2)/2 / 2 = 1/8
    m, *_ = R.compute_map(column(5, 0), [{"ok": [0, 7]}])
    assert m == pytest.approx(1 / 8)
    # no positive in the list at all: AP 0 and P@k 0 (revisitop would fail on max([]))
    m, _, pr, _ = R.compute_map(column(5, 6), [{"ok": [0]}])
    assert m == 0.0 and list(pr) == [0.0, 0.0, 0.0]


def test_protocols_by_hand():
    # one query; ranked 0 1 2 3 4 5; easy {0, 3}, hard {2}, junk {1}
    gnd = [{"easy": [0, 3], "hard": [2], "junk": [1]}]
    ranks = column(0, 1, 2, 3, 4, 5)
    scores = R.evaluate(ranks, gnd, (1,))
    # Easy: ok {0,3}, junk {1,2}: ranks 0, 3-2=1 -> AP = (1 + (1/1 + 2/2)/2)/2 = 1
    # Medium: ok {0,2,3}, junk {1}: ranks 0, 1, 2 -> 1
    # Hard: ok {2}, junk {1,0}: rank 2-2 = 0 -> 1
    assert scores.metrics["mAP_E"] == scores.metrics["mAP_M"] == scores.metrics["mAP_H"] == 100.0
    ranks = column(5, 2, 4, 0, 1, 3)
    scores = R.evaluate(ranks, gnd, (1, 5))
    # Easy: ok {0,3}, junk {1,2}: positions 3, 5; junk at 1, 4 -> ranks 2, 3: AP = [(0 + 1/3)/2 + (1/3 + 2/4)/2]/2
    assert scores.metrics["mAP_E"] == pytest.approx(100 * 7 / 24)
    # Medium: ok {0,2,3}, junk {1}: positions 1, 3, 5; junk at 4 -> ranks 1, 3, 4
    ap_m = ((0 + 1 / 2) / 2 + (1 / 3 + 2 / 4) / 2 + (2 / 4 + 3 / 5) / 2) / 3
    assert scores.metrics["mAP_M"] == pytest.approx(100 * ap_m)
    # Hard: ok {2}, junk {1,0,3}: position 1, nothing junk before -> rank 1: AP = (0 + 1/2)/2; P@1 = 0, P@5 = 1/2
    assert scores.metrics["mAP_H"] == pytest.approx(25.0)
    assert scores.metrics["mP@1_H"] == 0.0 and scores.metrics["mP@5_H"] == pytest.approx(50.0)
    assert scores.metrics["n_queries_H"] == 1.0


def test_per_query_csv_means_are_the_maps():
    rng = np.random.default_rng(3)
    ranks = np.stack([rng.permutation(30) for _ in range(6)], axis=1)
    gnd = [
        {"easy": rng.choice(30, 3, replace=False), "hard": [] if q == 2 else [q + 20], "junk": [29 - q]}
        for q in range(6)
    ]
    scores = R.evaluate(ranks, gnd)
    rows = [line.split(",") for line in scores.per_query_csv([f"q{i}" for i in range(6)]).splitlines()]
    header, body = rows[0], rows[1:]
    ap_h = [float(r[header.index("AP_H")]) for r in body if r[header.index("AP_H")]]
    assert len(ap_h) == 5 and body[2][header.index("AP_H")] == ""  # query 2 has no hard positive
    assert np.mean(ap_h) == pytest.approx(scores.metrics["mAP_H"], abs=1e-5)


def test_bad_ranks_are_named():
    with pytest.raises(ValueError, match=r"ranks has 4 columns but the ground truth has 2 queries"):
        R.compute_map(np.zeros((2, 4), dtype=int), [{"ok": [0]}] * 2)
    with pytest.raises(ValueError, match="integer array"):
        R.compute_map(np.zeros((4, 2)), [{"ok": [0]}] * 2)
    with pytest.raises(ValueError, match="kappas"):
        R.compute_map(np.zeros((4, 1), dtype=int), [{"ok": [0]}], (0,))
    with pytest.raises(ValueError, match="protocol 'medum'"):
        R.protocol_gnd([], "medum")


# ----------------------------------------------------------------------------------------------- transcription


def revisitop_map(ranks, gnd, kappas):
    """revisitop's compute_map (rop:python/evaluate.py) transcribed loop by loop, in plain Python."""
    nq = ranks.shape[1]
    total, nempty = 0.0, 0
    aps = [0.0] * nq
    prs = [[0.0] * len(kappas) for _ in range(nq)]
    pr = [0.0] * len(kappas)
    for i in range(nq):
        ok = list(gnd[i]["ok"])
        if not ok:
            aps[i] = NAN
            prs[i] = [NAN] * len(kappas)
            nempty += 1
            continue
        junk = list(gnd[i].get("junk", []))
        col = [int(v) for v in ranks[:, i]]
        ok_set, junk_set = {int(v) for v in ok}, {int(v) for v in junk}  # np.in1d's membership test
        pos = [r for r, item in enumerate(col) if item in ok_set]
        jpos = [r for r, item in enumerate(col) if item in junk_set]
        k = ij = 0
        for ip in range(len(pos)):
            while ij < len(jpos) and pos[ip] > jpos[ij]:
                k += 1
                ij += 1
            pos[ip] -= k
        ap = 0.0
        for j, rank in enumerate(pos):
            p0 = 1.0 if rank == 0 else j / rank
            p1 = (j + 1) / (rank + 1)
            ap += (p0 + p1) * (1.0 / len(ok)) / 2.0
        total += ap
        aps[i] = ap
        pos1 = [p + 1 for p in pos]
        for j, kappa in enumerate(kappas):
            kq = min(max(pos1), kappa)
            prs[i][j] = sum(1 for p in pos1 if p <= kq) / kq
            pr[j] += prs[i][j]
    return total / (nq - nempty), np.array(aps), np.array(pr) / (nq - nempty), np.array(prs)


def random_case(rng: np.random.Generator, truncate: bool):
    n_db, nq = int(rng.integers(1, 40)), int(rng.integers(1, 9))
    rows = int(rng.integers(1, n_db + 1)) if truncate else n_db
    ranks = np.stack([rng.permutation(n_db)[:rows] for _ in range(nq)], axis=1)
    gnd = []
    for q in range(nq):
        n_ok = int(rng.integers(0, n_db + 1)) if rng.random() > 0.15 else 0
        ok = rng.choice(n_db, n_ok, replace=False)
        if truncate and n_ok and not np.isin(ranks[:, q], ok).any():
            ok = np.append(ok[1:], ranks[int(rng.integers(rows)), q])  # revisitop needs a ranked positive
        junk = rng.choice(n_db, int(rng.integers(0, n_db + 1)), replace=False)  # may overlap ok
        gnd.append({"ok": ok, "junk": junk} if rng.random() > 0.2 else {"ok": ok})
    if all(len(g["ok"]) == 0 for g in gnd):
        gnd[0] = {"ok": ranks[:1, 0].copy(), "junk": np.array([], dtype=int)}
    return ranks, gnd


@pytest.mark.parametrize("truncate", [False, True])
def test_matches_the_transcription_on_random_rankings(truncate):
    rng = np.random.default_rng(12 + truncate)
    for _ in range(300):
        ranks, gnd = random_case(rng, truncate)
        kappas = (1, 2, 5, 10)
        ours = R.compute_map(ranks, gnd, kappas)
        ref = revisitop_map(ranks, gnd, kappas)
        assert ours[0] == pytest.approx(ref[0], rel=1e-12, abs=1e-15)
        for a, b in zip(ours[1:], ref[1:]):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15, equal_nan=True)


def test_matches_the_transcription_on_the_real_gnd_with_random_rankings(fixtures_dir):
    gt = R.read_gnd(real_gnd_path(fixtures_dir))
    rng = np.random.default_rng(0)
    n_db, nq = len(gt["imlist"]), len(gt["qimlist"])
    ranks = np.stack([rng.permutation(n_db) for _ in range(nq)], axis=1)
    # move some positives forward so that the APs are not all tiny
    for q in range(nq):
        pos = np.flatnonzero(np.isin(ranks[:, q], gt["gnd"][q]["easy"]))[:5]
        ranks[: len(pos), q], ranks[pos, q] = ranks[pos, q], ranks[: len(pos), q].copy()
    for protocol in R.PROTOCOLS.values():
        g = R.protocol_gnd(gt["gnd"], protocol)
        ours, ref = R.compute_map(ranks, g), revisitop_map(ranks, g, R.KAPPAS)
        assert ours[0] == pytest.approx(ref[0], rel=1e-12) and 0 < ours[0] < 1
        np.testing.assert_allclose(ours[1], ref[1], rtol=1e-12)
        np.testing.assert_allclose(ours[2], ref[2], rtol=1e-12)


def test_perfect_ranking_of_the_real_gnd_scores_100(fixtures_dir):
    gt = R.read_gnd(real_gnd_path(fixtures_dir))
    n_db = len(gt["imlist"])
    # per query: easy, then hard, then junk, then the rest: Easy and Medium are perfect, Hard is not
    cols = []
    for g in gt["gnd"]:
        first = np.concatenate([g["easy"], g["hard"], g["junk"]])
        cols.append(np.concatenate([first, np.setdiff1d(np.arange(n_db), first)]))
    scores = R.evaluate(np.stack(cols, axis=1), gt["gnd"])
    assert scores.metrics["mAP_E"] == scores.metrics["mAP_M"] == 100.0
    # Hard: easy is junk, so hard positives come right after the junk-removed easy ones: also perfect
    assert scores.metrics["mAP_H"] == 100.0 and scores.metrics["n_queries_H"] == 70.0
    cols = [np.concatenate([g["hard"], np.setdiff1d(np.arange(n_db), g["hard"])]) for g in gt["gnd"]]
    scores = R.evaluate(np.stack(cols, axis=1), gt["gnd"])
    assert scores.metrics["mAP_H"] == 100.0 and scores.metrics["mAP_E"] < 100.0


# ----------------------------------------------------------------------------------------------- ranking


def test_rank_database_by_cosine():
    database = np.array([[1.0, 0.0], [0.0, 3.0], [2.0, 2.0], [-1.0, 0.1]])
    queries = np.array([[10.0, 1.0], [0.0, -1.0]])
    ranks = R.rank_database(database, queries)
    assert ranks.shape == (4, 2)
    assert list(ranks[:, 0]) == [0, 2, 1, 3]  # cosines .995, .774, .0995, -.990
    assert list(ranks[:, 1]) == [0, 3, 2, 1]  # cosines 0, -.0995, -.707, -1
    with pytest.raises(ValueError, match="same d"):
        R.rank_database(database, np.zeros((2, 3)))


# ----------------------------------------------------------------------------------------------- reading the gnd


def test_real_gnd_reads_with_the_restricted_unpickler(fixtures_dir):
    path = real_gnd_path(fixtures_dir)
    gt = R.read_gnd(path)
    with open(path, "rb") as f:
        plain = pickle.load(f)  # the trusted fixture, read plainly for comparison only
    assert gt["imlist"] == plain["imlist"] and len(gt["imlist"]) == 4993
    assert gt["qimlist"] == plain["qimlist"] and len(gt["qimlist"]) == 70
    assert gt["qimlist"][0] == "all_souls_000013" and gt["imlist"][296] == "all_souls_000055"
    np.testing.assert_allclose(gt["gnd"][0]["bbx"], [136.5, 34.1, 648.5, 955.7])
    assert 296 in gt["gnd"][0]["easy"]  # PROVENANCE.md: an easy positive of query 0
    for ours, theirs in zip(gt["gnd"], plain["gnd"]):
        for k in ("easy", "hard", "junk"):
            assert ours[k].dtype == np.int64 and list(ours[k]) == list(theirs[k])


def small_gnd(**overrides):
    gnd = {
        "imlist": ["a", "b", "c"],
        "qimlist": ["q"],
        "gnd": [{"bbx": [1.0, 2.0, 30.0, 40.0], "easy": [0], "hard": [2], "junk": []}],
    }
    gnd.update(overrides)
    return gnd


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_arrays_inside_the_gnd_are_allowed(tmp_path, protocol):
    gnd = small_gnd(
        gnd=[{"bbx": np.array([1.5, 2.0, 30.0, 40.0]), "easy": np.array([0, 1]), "hard": np.int64(2), "junk": []}]
    )
    gnd["gnd"][0]["hard"] = [np.int64(2)]  # numpy scalars too
    path = tmp_path / "gnd.pkl"
    path.write_bytes(pickle.dumps(gnd, protocol=protocol))
    gt = R.read_gnd(path)
    assert list(gt["gnd"][0]["easy"]) == [0, 1] and list(gt["gnd"][0]["hard"]) == [2]
    np.testing.assert_array_equal(gt["gnd"][0]["bbx"], [1.5, 2.0, 30.0, 40.0])


class _System:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_calling_os_system_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = _System()
    evil.marker = marker
    path = tmp_path / "gnd_roxford5k.pkl"
    path.write_bytes(pickle.dumps(small_gnd(imlist=evil)))
    with pytest.raises(R.UnsafePickleError, match=r"gnd_roxford5k.pkl: refused to load (posix|os|nt)\.system"):
        R.read_gnd(path)
    assert not marker.exists()


class Unexpected:
    def __init__(self):
        self.x = 1


@pytest.mark.parametrize(
    "payload, name",
    [
        (Unexpected(), "test_retrieval_metrics.Unexpected"),
        (__import__("collections").OrderedDict(a=1), "collections.OrderedDict"),
        ({1, 2}, None),  # a set is written without a global in protocol 4: fine; with protocol 2 it needs one
    ],
)
def test_unexpected_classes_are_refused(tmp_path, payload, name):
    path = tmp_path / "gnd.pkl"
    path.write_bytes(pickle.dumps(small_gnd(extra=payload), protocol=2))
    if name is None:
        with pytest.raises(R.UnsafePickleError, match=r"refused to load builtins\.set"):
            R.read_gnd(path)
        path.write_bytes(pickle.dumps(small_gnd(extra=payload), protocol=4))
        assert R.read_gnd(path)["imlist"] == ["a", "b", "c"]  # unknown keys are ignored
        return
    with pytest.raises(R.UnsafePickleError, match=f"refused to load .*{name.split('.')[-1]}"):
        R.read_gnd(path)


def test_handwritten_global_and_persistent_id_are_refused(tmp_path):
    path = tmp_path / "gnd.pkl"
    path.write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")  # protocol 0: GLOBAL builtins.eval, REDUCE
    pickletools.dis(path.read_bytes(), out=io.StringIO())  # a well-formed pickle
    with pytest.raises(R.UnsafePickleError, match=r"builtins\.eval"):
        R.read_gnd(path)
    path.write_bytes(b"P0\n.")  # PERSID
    with pytest.raises(R.UnsafePickleError, match="persistent id"):
        R.read_gnd(path)
    assert issubclass(R.UnsafePickleError, ValueError)


@pytest.mark.parametrize(
    "content, message",
    [
        ([1, 2], "expected a dict with keys imlist, qimlist and gnd; found list"),
        ({"imlist": [], "qimlist": []}, r"found \['imlist', 'qimlist'\]"),
        (small_gnd(imlist=["a", 3]), "'imlist' must be a list of image names"),
        (small_gnd(imlist=["a", "../../etc/passwd", "c"]), "not plain file names"),
        (small_gnd(gnd=[]), r"'gnd' must be a list with one dict per query \(1\), found 0"),
        (
            small_gnd(gnd=[{"easy": [0], "hard": []}]),
            r"gnd\[0\] \(query q\): expected a dict with keys easy, hard, junk",
        ),
        (small_gnd(gnd=[{"easy": [3], "hard": [], "junk": []}]), r"gnd\[0\] \(query q\) 'easy': index 3 is outside"),
        (small_gnd(gnd=[{"easy": [0.5], "hard": [], "junk": []}]), "expected a list of integer database indices"),
        (small_gnd(gnd=[{"bbx": [1, 2, 3], "easy": [], "hard": [], "junk": []}]), "'bbx': expected 4 numbers"),
        (small_gnd(gnd=[{"bbx": [5, 2, 3, 9], "easy": [], "hard": [], "junk": []}]), "'bbx' .* is empty"),
    ],
)
def test_unexpected_content_is_named(tmp_path, content, message):
    path = tmp_path / "gnd_x.pkl"
    path.write_bytes(pickle.dumps(content))
    with pytest.raises(ValueError, match=message) as err:
        R.read_gnd(path)
    assert "gnd_x.pkl" in str(err.value)


def test_missing_or_corrupt_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pkl does not exist"):
        R.read_gnd(tmp_path / "nope.pkl")
    path = tmp_path / "cut.pkl"
    path.write_bytes(pickle.dumps(small_gnd())[:40])
    with pytest.raises(ValueError, match="cut.pkl: cannot read it as a pickle"):
        R.read_gnd(path)


def test_restrict_gnd_renumbers_and_drops(tmp_path):
    gt = {
        "imlist": ["a", "b", "c", "d"],
        "qimlist": ["q0", "q1"],
        "gnd": [
            {"easy": np.array([0, 2]), "hard": np.array([3]), "junk": np.array([1]), "bbx": None},
            {"easy": np.array([1]), "hard": np.array([], dtype=int), "junk": np.array([0]), "bbx": None},
        ],
    }
    sub = R.restrict_gnd(gt, database=["d", "a"], queries=["q1", "q0"])
    assert sub["imlist"] == ["d", "a"] and sub["qimlist"] == ["q1", "q0"]
    q1, q0 = sub["gnd"]
    assert list(q0["easy"]) == [1] and list(q0["hard"]) == [0] and list(q0["junk"]) == []
    assert list(q1["easy"]) == [] and list(q1["junk"]) == [1]
    with pytest.raises(ValueError, match=r"1 of the 2 database images are not in the ground truth, e.g. \['x'\]"):
        R.restrict_gnd(gt, database=["a", "x"])
    with pytest.raises(ValueError, match="'a' appears more than once"):
        R.restrict_gnd(gt, database=["a", "a"])


# ----------------------------------------------------------------------------------------------- command line


def test_cli_scores_saved_descriptors_against_the_real_gnd(fixtures_dir, tmp_path, capsys):
    gt = R.read_gnd(real_gnd_path(fixtures_dir))
    # descriptors that put each query's easy positives first: one-hot codes per query over 70 dims
    database = np.full((len(gt["imlist"]), 70), 0.01)
    for q, g in enumerate(gt["gnd"]):
        database[g["easy"], q] += 1.0
    queries = np.eye(70)
    path = tmp_path / "features.npz"
    np.savez(path, database=database, queries=queries)
    assert R.main(["--features", str(path), "--gnd", str(real_gnd_path(fixtures_dir))]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = R.evaluate(R.rank_database(database, queries), gt["gnd"]).metrics
    assert out == {k: pytest.approx(v, abs=1e-6) for k, v in expected.items()}
    assert out["mAP_E"] == 100.0 and out["mAP_M"] < 100.0
    np.savez(path, database=database[:10], queries=queries)
    with pytest.raises(ValueError, match="features 'database' has 10 rows but the ground truth lists 4993"):
        R.main(["--features", str(path), "--gnd", str(real_gnd_path(fixtures_dir))])
    np.savez(path, db=database)
    with pytest.raises(ValueError, match=r"has no \['database', 'queries'\]"):
        R.read_features(path)
