"""docs/tutorial.md stays true: its commands are run in order in a fresh folder, as a user would
type them, and what they print is compared with what the page shows.

Times, throughputs and the processor's name vary from run to run and are masked; every other
number must match, to the digits the page shows (log-likelihoods to 4 decimals, probabilities to
about 1e-9 relative: the page was copied from a real run on the CPU). The install step is not
run (the test runs inside an installed pcir). The interrupted run (``timeout -s INT 12``) is
replayed by sending SIGINT once epoch 4 has been printed, which is what the page shows the
timeout doing; the ``--resume`` after it then has to pick up at epoch 4.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "tutorial.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)

# (pattern, replacement) applied to both sides before comparing
VOLATILE = [
    (re.compile(r"\d+(\.\d+)?s  \d+(\.\d+)?k? samples/s"), "<T>s  <R> samples/s"),
    (re.compile(r"\d+(\.\d+)? s/epoch on .*$"), "<T> s/epoch on <CPU>"),
    (re.compile(r"^(device\s+cpu) \(.*\)$"), r"\1 (<CPU>)"),
    (re.compile(r"(last epoch .*, )\d+(\.\d+)? s$"), r"\1<T> s"),
]
NUMBER = re.compile(r"-?\d+\.\d+(?:e-?\d+)?")


def console_steps(text: str) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) for every ``$ `` line of the page's console blocks."""
    steps: list[tuple[str, list[str]]] = []
    for m in FENCE.finditer(text):
        if m.group(1) != "console":
            continue
        for line in m.group(2).splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            elif steps:
                steps[-1][1].append(line)
    return steps


def python_files(text: str) -> dict[str, str]:
    """The page's Python blocks, by the file name the text before each gives (``name.py``:)."""
    out = {}
    for m in FENCE.finditer(text):
        if m.group(1) == "python":
            before = text[: m.start()].rstrip().splitlines()[-1]
            names = re.findall(r"`(\w+\.py)`", before)
            assert names, f"docs/tutorial.md: no file name before the python block at offset {m.start()}"
            out[names[-1]] = m.group(2)
    return out


def _mask(line: str) -> str:
    line = line.rstrip()
    for pat, rep in VOLATILE:
        line = pat.sub(rep, line)
    return line


def same_line(want: str, got: str) -> bool:
    want, got = _mask(want), _mask(got)
    if NUMBER.sub("#", want) != NUMBER.sub("#", got):
        return False
    for a, b in zip(NUMBER.findall(want), NUMBER.findall(got), strict=True):
        decimals = len(a.split(".")[1].split("e")[0])
        tol = max(1.5 * 10.0**-decimals, 1e-9 * abs(float(a))) if decimals <= 6 else 1e-9 * max(1.0, abs(float(a)))
        if abs(float(a) - float(b)) > tol:
            return False
    return True


def compare(cmd: str, want: list[str], got: str) -> None:
    got_lines = [ln for ln in got.splitlines() if ln.strip()]
    want_lines = [ln for ln in want if ln.strip()]
    diff = [f"  page: {w!r}\n   run: {g!r}" for w, g in zip(want_lines, got_lines, strict=False) if not same_line(w, g)]
    if len(want_lines) != len(got_lines) or diff:
        pytest.fail(
            f"docs/tutorial.md: `{cmd}` printed\n{got}\nwhich differs from the page "
            f"({len(want_lines)} lines shown, {len(got_lines)} printed):\n" + "\n".join(diff[:8])
        )


def test_the_page_is_what_this_test_expects():
    text = PAGE.read_text()
    steps = console_steps(text)
    cmds = [c for c, _ in steps]
    assert any(c.startswith("pcir train") for c in cmds)
    assert any(c.startswith("timeout -s INT") for c in cmds)
    assert any("--resume" in c for c in cmds)
    assert "query.py" in python_files(text)
    # the comparison itself: a changed log-likelihood, a changed word and a missing line all fail
    assert same_line("test    mean log-likelihood -6.1287", "test    mean log-likelihood -6.1288")
    assert not same_line("test    mean log-likelihood -6.1287", "test    mean log-likelihood -6.1290")
    assert not same_line("valid   mean log-likelihood -6.0779", "train   mean log-likelihood -6.0779")
    assert same_line(
        "epoch   1/13  train -7.7334  valid -6.5396 *  step 0.5  7.54s  2.1k samples/s",
        "epoch   1/13  train -7.7334  valid -6.5396 *  step 0.5  1.02s  15.9k samples/s",
    )
    assert not same_line("0,x0,0.40214014656624364,0.5978598534337564", "0,x0,0.40214,0.5978598534337564")
    with pytest.raises(pytest.fail.Exception):
        compare("x", ["a", "b"], "a\n")


def _shell(cmd: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", "set -o pipefail; " + cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def _interrupt_after_epoch(cmd: str, cwd: Path, env: dict, epoch_prefix: str) -> str:
    """Run ``cmd`` (without its ``timeout`` prefix) and send SIGINT once a line starting with
    ``epoch_prefix`` has been printed; returns what it printed."""
    argv = shlex.split(cmd)
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    out = []
    assert proc.stdout is not None
    for line in proc.stdout:
        out.append(line)
        if line.startswith(epoch_prefix):
            # the line is printed once the epoch's checkpoint is written; a third of that epoch's
            # time later the run is well inside the next one
            took = re.search(r"(\d+(?:\.\d+)?)s  ", line)
            time.sleep(min(0.5, float(took.group(1)) / 3) if took else 0.2)
            proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    return "".join(out)


@pytest.mark.slow
def test_tutorial_commands_print_what_the_page_shows(tmp_path, device):
    if device != "cpu":
        pytest.skip("the page is a CPU session; the GPU suite is for the kernels")
    text = PAGE.read_text()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, line in (("pcir", f'exec "{sys.executable}" -m pcir "$@"'), ("python", f'exec "{sys.executable}" "$@"')):
        (bindir / name).write_text(f"#!/bin/sh\n{line}\n")
        (bindir / name).chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(REPO / "examples", work / "examples")
    for name, code in python_files(text).items():
        (work / name).write_text(code)
    env = dict(os.environ)
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "100"
    env.pop("TRITON_INTERPRET", None)  # the page ran pcir as a user does: the torch engine on the CPU
    ran = 0
    for cmd, want in console_steps(text):
        if cmd.startswith(("python3 -m venv", "pip install")):
            continue  # the install step: this test runs inside an installed pcir
        if cmd.startswith("timeout -s INT"):
            inner = cmd.split(" ", 4)[4]
            stop_at = next(w for w in want if w.startswith("interrupted in epoch"))
            last = int(re.search(r"holds epoch (\d+)", stop_at).group(1))
            total = re.search(r"--epochs (\d+)", inner).group(1)
            got = _interrupt_after_epoch(inner, work, env, f"epoch {last:>3}/{total}")
        else:
            res = _shell(cmd, work, env)
            assert res.returncode == 0, f"docs/tutorial.md: `{cmd}` failed:\n{res.stdout}\n{res.stderr}"
            got = res.stdout
        compare(cmd, want, got)
        ran += 1
    assert ran >= 12
    assert (work / "runs" / "nltcs" / "curves.png").stat().st_size > 0
    assert (work / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
