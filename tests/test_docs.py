"""Runnable documentation: every fenced block in README.md and docs/*.md whose info string is ``bash runnable`` or
``python runnable`` is executed as written, so a documented command or snippet cannot rot.

- bash blocks run as ``bash -euo pipefail -c <block>``, python blocks as a file run by this interpreter; both with
  the repository root as the working directory, the venv's bin first on PATH and ``SRT_DATA`` unset (so
  ``paths.data_root`` is ``data/``, as on a fresh clone), and a timeout.
- The repository root is a *sandbox*: a copy of the repository's files (what git tracks or would track: no
  ``data/``, ``results/``, ``.venv``) with ``../shared`` beside it linked to the real one. There is one sandbox per
  documentation file, and its blocks run in the order they appear, so a page's later blocks see what its earlier
  ones wrote under ``data/`` and ``results/`` (as a reader following the page would), while no page sees
  another's files or the developer's own ``data/`` and ``results/``.
- A block that fails fails the test with the block's file, line and output.

Mark a block runnable only if it runs this way in well under a minute on a laptop CPU; long real-data commands
stay plain ``bash`` blocks (docs/development.md, "Runnable documentation").
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LANGUAGES = ("bash", "python")
TIMEOUT_S = 900  # per block; a block meant to take seconds, with margin for a shared, loaded machine
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")


@dataclass(frozen=True)
class Block:
    file: str  # relative to the repository root
    line: int  # 1-based line of the opening fence
    lang: str  # bash | python
    code: str

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def runnable_blocks(text: str, file: str) -> list[Block]:
    """The fenced blocks of a Markdown text whose info string is `<bash|python> runnable`, in order."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m or (m.group(1)[0] == "`" and "`" in m.group(2)):
            i += 1
            continue
        fence, words = m.group(1), m.group(2).split()
        body, j = [], i + 1
        while j < len(lines) and not re.match(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[j]):
            body.append(lines[j])
            j += 1
        if len(words) >= 2 and words[0] in LANGUAGES and "runnable" in words[1:]:
            blocks.append(Block(file, i + 1, words[0], "\n".join(body) + "\n"))
        i = j + 1
    return blocks


def blocks_of(path: Path) -> list[Block]:
    return runnable_blocks(path.read_text(), path.relative_to(REPO).as_posix())


def _repository_files() -> list[str]:
    """What a clone would hold: tracked files and new files git does not ignore (so a doc block written but not
    yet committed is checked too). Outside a git checkout, everything but the usual ignored folders."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout.decode()
        return [f for f in out.split("\0") if f and (REPO / f).is_file()]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "data", "results", "outputs", "multirun", "wandb", "__pycache__", ".pytest_cache"}
        return [
            p.relative_to(REPO).as_posix()
            for p in REPO.rglob("*")
            if p.is_file() and not skip.intersection(p.relative_to(REPO).parts)
        ]


def make_sandbox(parent: Path) -> Path:
    """A copy of the repository at parent/repo, with parent/shared -> the real ../shared (fixtures) if present."""
    root = parent / "repo"
    for rel in _repository_files():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, root / rel)
    shared = REPO.parent / "shared"
    if shared.is_dir():
        (parent / "shared").symlink_to(shared, target_is_directory=True)
    return root


def block_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("SRT_DATA", None)  # paths.data_root falls back to data/, as on a fresh clone
    return env


def run_block(block: Block, root: Path, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run one block as written in the repository root `root`; raise AssertionError naming it if it fails."""
    if block.lang == "bash":
        cmd = ["bash", "-euo", "pipefail", "-c", block.code]
    else:  # a file in the root, so that `import srt` finds the root's package first, as `python` in the root would
        script = root / f".doc_block_{Path(block.file).stem}_{block.line}.py"
        script.write_text(block.code)
        cmd = [sys.executable, script.name]
    try:
        proc = subprocess.run(
            cmd, cwd=root, env=block_env(), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        raise AssertionError(
            f"{block.where}: {block.lang} block timed out after {timeout:.0f} s\n{out[-4000:]}"
        ) from None
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr)[-6000:]
        raise AssertionError(
            f"{block.where}: {block.lang} block failed with exit code {proc.returncode}\n"
            f"--- block ---\n{block.code}--- output (last 6000 characters) ---\n{output}"
        )
    return proc


# ----------------------------------------------------------------------------------------------------------
# The harness itself (fast)
# ----------------------------------------------------------------------------------------------------------
def test_the_parser_finds_runnable_blocks_only_with_their_lines():
    text = "\n".join(
        [
            "# title",  # 1
            "```bash runnable",  # 2
            "echo one",
            "```",
            "```bash",  # 5: plain, not run
            "python run.py task=davis",
            "```",
            "````python runnable",  # 8: a longer fence holds a shorter one
            "print('```')",
            "```",
            "x = 1",
            "````",
            "~~~python",  # 13
            "raise SystemExit(1)",
            "~~~",
            "```text runnable",  # 16: not a language that runs
            "```",
        ]
    )
    found = runnable_blocks(text, "doc.md")
    assert [(b.line, b.lang) for b in found] == [(2, "bash"), (8, "python")]
    assert found[0].code == "echo one\n"
    assert found[1].code == "print('```')\n```\nx = 1\n"


@pytest.mark.parametrize(
    "lang, code",
    [
        ("bash", "echo before\nexit 3\n"),
        ("bash", 'echo "$SURELY_UNDEFINED_VARIABLE"\n'),  # -u
        ("bash", "false | true\n"),  # -o pipefail
        ("bash", "false\necho not reached\n"),  # -e
        ("python", "print('before')\nraise ValueError('boom')\n"),
    ],
)
def test_a_failing_block_fails_with_its_file_line_and_output(tmp_path, lang, code):
    block = Block("docs/example.md", 42, lang, code)
    with pytest.raises(AssertionError, match=r"docs/example\.md:42: \w+ block failed") as info:
        run_block(block, tmp_path, timeout=60)
    if "before" in code:
        assert "before" in str(info.value)


def test_a_block_runs_in_the_root_with_the_venv_first_on_path(tmp_path):
    block = Block("x.md", 1, "bash", 'pwd\ncommand -v python\necho "${SRT_DATA-unset}"\n')
    out = run_block(block, tmp_path, timeout=60).stdout.splitlines()
    assert Path(out[0]).resolve() == tmp_path.resolve()
    assert Path(out[1]).parent == Path(sys.executable).parent
    assert out[2] == "unset"


def test_readme_marks_its_quick_start_and_library_snippet_runnable():
    """Guards against passing vacuously: the README's quick start (sample data, a run, a sweep and its table)
    and its library snippet are marked runnable, so the slow tests below execute them."""
    blocks = blocks_of(REPO / "README.md")
    bash = "\n".join(b.code for b in blocks if b.lang == "bash")
    python = [b.code for b in blocks if b.lang == "python"]
    assert "scripts/make_sample_data.py" in bash and "python run.py task=" in bash
    assert "python run.py -m " in bash and "python -m eval.tables" in bash
    assert any("srt.StochasticResonance" in code and "print(" in code for code in python)


# ----------------------------------------------------------------------------------------------------------
# The documentation's blocks (slow: each page's blocks run end to end)
# ----------------------------------------------------------------------------------------------------------
PAGES = [p for p in DOC_FILES if blocks_of(p)]


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(REPO).as_posix() for p in PAGES])
def test_runnable_blocks_run_as_written(page, tmp_path):
    root = make_sandbox(tmp_path)
    for block in blocks_of(page):
        run_block(block, root)
