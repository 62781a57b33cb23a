"""Memory does not grow with the number of shifts: peak memory of pooled SRT, 49 vs 9 shifts.

Each measurement runs in a fresh subprocess: after a warm-up chunk, the kernel's resident-set high-water
mark is reset (/proc/self/clear_refs) and read back after the call (VmHWM), with glibc told to return
freed blocks to the system at once, so the figure is the peak live memory of the call itself. A naive
implementation that keeps every pass (stacking the shifted images and their token grids, then
averaging) is measured the same way as a control: it must exceed the bound, so the test can fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json, re, sys, torch
    torch.set_num_threads(1)
    import srt

    def status_kb(key):
        return int(re.search(key + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))

    level, mode = int(sys.argv[1]), sys.argv[2]
    bb = srt.load_backbone("dino_vits16", pretrained=False, outputs=("tokens",), depth=1, embed_dim=192, num_heads=3)
    images = torch.randn(2, 3, 448, 448)
    sr = srt.StochasticResonance(bb, level=level, batch_size=8)
    with torch.no_grad():
        srt.StochasticResonance(bb, level=1, samples=4, batch_size=8)(images)  # warm-up: one full chunk
        open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark
        base = status_kb("VmRSS")
        if mode == "srt":
            sr(images)
        else:  # control: keep every pass in memory, then average
            shifted = torch.stack([srt.shift_image(images, dy, dx) for dy, dx in sr.shift_set])
            tokens = torch.stack([bb(s)["tokens"] for s in shifted])
            tokens.mean(0)
        print(json.dumps({"growth_kb": status_kb("VmHWM") - base}))
""")


def _growth(level: int, mode: str) -> int:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(level), mode], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["growth_kb"]


@pytest.mark.slow
def test_pooled_memory_does_not_grow_with_shifts():
    nine, fortynine = _growth(1, "srt"), _growth(3, "srt")
    assert nine > 0, "the measurement saw no memory use at all"
    assert fortynine <= 1.2 * nine, (nine, fortynine)
    naive9, naive49 = _growth(1, "naive"), _growth(3, "naive")
    assert naive49 > 1.2 * naive9, (naive9, naive49)  # the measurement does see growth when there is some
