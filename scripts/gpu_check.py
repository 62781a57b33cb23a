#!/usr/bin/env python
"""The first thing to run on a CUDA machine (``make gpu-check``): self-contained (random weights, no data).

1. Exactness of the SRT core on the device: pooled and dense (stride p/2) outputs of ``srt.StochasticResonance``
   at level 3 against the brute force the tests use (tests/srt_reference.py: every pass upsampled, shifted back,
   stacked), for both borders (official, normalized). TF32 is switched off for this part.
2. bf16 autocast against float32: the max relative error (max |bf16 - fp32| / max |fp32|) of the pooled tokens.
3. Throughput (ViT-S/16 at 480x832, level 3): seconds per frame and peak memory of pooled and dense s=8 SRT, and
   the ratio to the same 49 plain forward passes (in the same chunks) alone.

Prints Markdown (``--out FILE`` writes it too). Without CUDA it says so and exits 0; ``--device cpu --small``
runs the same checks on the CPU at small sizes (a tiny ViT) so the code path is exercised anywhere:

    python scripts/gpu_check.py                     # on a GPU machine: < 10 minutes
    python scripts/gpu_check.py --device cpu --small
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import sys
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from srt.errors import report_user_errors  # noqa: E402

LEVEL = 3


def brute_force_reference():
    """tests/srt_reference.py, the independent brute force of tests/test_srt_exactness.py (not a package)."""
    spec = importlib.util.spec_from_file_location("srt_reference", REPO / "tests" / "srt_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def backbone(device, small: bool):
    import srt

    kwargs = dict(depth=2, embed_dim=64, num_heads=2) if small else {}
    return srt.load_backbone("dino_vits16", pretrained=False, outputs=("tokens",), **kwargs).to(device).eval()


def exactness(bb, device, small: bool) -> tuple[list[str], bool]:
    import torch

    import srt

    ref = brute_force_reference()
    h, w = (48, 80) if small else (224, 224)
    images = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0)).to(device)
    p = bb.patch_size
    rows, ok = ["| border | output | max abs error | scale (max abs) | pass |", "|---|---|---|---|---|"], True
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            for border in ("official", "normalized"):
                sr = srt.StochasticResonance(bb, level=LEVEL, border=border, batch_size=16)
                truth = ref.brute_force(bb, images, list(sr.shift_set), border=border)
                for label, ours, want in (
                    ("pooled", sr(images)["tokens"], ref.pool(truth, p)),
                    (f"dense s={p // 2}", sr.dense(images, stride=p // 2)["tokens"], ref.pool(truth, p // 2)),
                ):
                    err = (ours.float() - want.float()).abs().max().item()
                    scale = want.abs().max().item()
                    good = err <= 1e-4 * max(scale, 1.0)
                    ok &= good
                    rows.append(f"| {border} | {label} | {err:.2e} | {scale:.3g} | {'yes' if good else 'NO'} |")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return rows, ok


def bf16_error(bb, device, small: bool) -> str:
    import torch

    import srt

    h, w = (64, 96) if small else (480, 832)
    images = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        fp32 = srt.StochasticResonance(bb, level=LEVEL)(images)["tokens"].float()
        if device.type == "cuda":  # the product's switch (srt.autocast=true)
            how = "srt.autocast=true"
            bf16 = srt.StochasticResonance(bb, level=LEVEL, autocast=True)(images)["tokens"].float()
        else:  # srt.autocast is CUDA-only; the CPU path autocasts the same call explicitly
            how = "torch.autocast('cpu', bfloat16) around SRT"
            with torch.autocast("cpu", dtype=torch.bfloat16):
                bf16 = srt.StochasticResonance(bb, level=LEVEL)(images)["tokens"].float()
    rel = ((bf16 - fp32).abs().max() / fp32.abs().max()).item()
    return f"bf16 autocast ({how}) vs float32, pooled tokens at {h}x{w}, level {LEVEL}: max relative error {rel:.2e}"


def _peak_reset(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device) -> Optional[float]:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None


def _timed(fn, device, repeats: int) -> tuple[float, Optional[float]]:
    import torch

    best, peak = float("inf"), None
    for _ in range(repeats):
        _peak_reset(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
        peak = _peak_mib(device)
    return best, peak


def throughput(bb, device, small: bool, repeats: int) -> list[str]:
    import torch

    import srt

    h, w = (96, 160) if small else (480, 832)
    images = torch.randn(1, 3, h, w, device=device)
    sr = srt.StochasticResonance(bb, level=LEVEL, batch_size=16)
    chunks = [torch.randn(min(16, sr.passes - i), 3, h, w, device=device) for i in range(0, sr.passes, 16)]
    runs = {
        f"plain forward passes x{sr.passes}": lambda: [bb(c) for c in chunks],
        "SRT pooled": lambda: sr(images),
        f"SRT dense s={bb.patch_size // 2}": lambda: sr.dense(images, stride=bb.patch_size // 2),
    }
    for fn in runs.values():  # warm-up (kernels, allocator)
        with torch.no_grad():
            fn()
    timed = {k: _timed(fn, device, repeats) for k, fn in runs.items()}
    base = next(iter(timed.values()))[0]
    rows = [
        f"ViT-S/16 (random weights{', tiny: depth 2, width 64' if small else ''}) at {h}x{w}, level {LEVEL} "
        f"({sr.passes} passes), {device}, best of {repeats}:",
        "",
        "| what | s/frame | peak memory (MiB) | / plain passes |",
        "|---|---|---|---|",
    ]
    for k, (t, peak) in timed.items():
        mem = "n/a (CPU)" if peak is None else f"{peak:.0f}"
        rows.append(f"| {k} | {t:.3f} | {mem} | {t / base:.2f} |")
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/gpu_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--small", action="store_true", help="tiny ViT and small images (a CPU run of the checks)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    args = parser.parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "gpu-check: no CUDA device on this machine (torch.cuda.is_available() is false), so there is nothing to "
            "check here. Run `make gpu-check` on a machine with a GPU; `python scripts/gpu_check.py --device cpu "
            "--small` runs the same checks on the CPU."
        )
        return 0
    from tasks import runner

    device = runner.resolve_device(args.device)
    torch.manual_seed(0)
    bb = backbone(device, args.small)
    rows, ok = exactness(bb, device, args.small)
    lines = [
        f"# gpu-check on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'} "
        f"(torch {torch.__version__}; random weights, no data)",
        "",
        f"## Exactness: SRT level {LEVEL} vs brute force (tests/srt_reference.py), float32, TF32 off",
        "",
        *rows,
        "",
        "## bf16",
        "",
        bf16_error(bb, device, args.small),
        "",
        "## Throughput",
        "",
        *throughput(bb, device, args.small, args.repeats),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        from srt.io import atomic_write_text

        atomic_write_text(args.out, text)
    if not ok:
        print("gpu-check: the SRT core does NOT match the brute force on this device (rows marked NO)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(report_user_errors(main, prog="scripts/gpu_check.py"))
