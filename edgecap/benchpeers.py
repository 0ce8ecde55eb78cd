"""The peers `edgecap-bench --compare` runs, and how each engine gets a process of its own.

Every engine (an edgecap precision on a backend, or a peer at a precision) runs in a child process,
so its peak RSS is its own and a crash in one costs only its rows. Peers run under `--peer-python`
(a virtual environment with transformers 4.57, Optimum and optimum-intel: bench/README.md says how
to make it), because Optimum pins transformers < 4.58 while edgecap's own environment need not.
A peer that cannot run (a package missing, its export failing, generate() raising) becomes a row
that carries the error's first line instead of timings.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path

log = logging.getLogger("edgecap.bench")

# name -> what it is, for --help and the README. Each runs fp32, and int8 too when --precision has it.
PEERS = {
    "pytorch": "transformers generate() on the checkpoint (fp32 only)",
    "pytorch-cuda": "transformers generate() on a CUDA GPU (needs torch with CUDA); fp32, and fp16 when --precision has it",
    "optimum": "Optimum ORTModelForVision2Seq (ONNX Runtime); int8 = ONNX Runtime dynamic quantization",
    "openvino": "optimum-intel OVModelForVision2Seq (OpenVINO CPU); int8 = NNCF 8-bit weight compression",
}
PEER_PRECISIONS = {"pytorch": ("fp32",), "pytorch-cuda": ("fp32", "fp16"), "optimum": ("fp32", "int8"),
                   "openvino": ("fp32", "int8")}
# where a peer runs (the rows' backend column); the others run on the CPU
PEER_BACKENDS = {"pytorch-cuda": "cuda"}

PEER_PYTHON_ENV = "EDGECAP_BENCH_PEER_PYTHON"


# OpenVINO prefixes each line of an error with where it was rethrown ("Exception from src/...:246:"),
# so a message's literal first line names a source file, not the problem.
_SOURCE_LOCATION = re.compile(r"(Caught exception: )?Exception from \S+:\d+:\s*")


def first_line(exc: BaseException) -> str:
    """An exception as one line: its type and its message's first line that says something (with
    the last such line too when they differ: OpenVINO states the cause last)."""
    if isinstance(exc, ImportError):
        return f"not installed: {exc.name or exc} (bench/README.md: the peer environment)"
    lines = [text for text in (_SOURCE_LOCATION.sub("", line).strip() for line in str(exc).splitlines()) if text]
    text = lines[0] if lines else ""
    if len(lines) > 1 and _SOURCE_LOCATION.search(str(exc)):
        text += " ... " + lines[-1]
    return f"{type(exc).__name__}: {text}"[:300]


def engine_specs(precisions: list[str], backends: list[str], peers: list[str],
                 graph_forms: tuple[str, ...] | list[str] = ("default",)) -> list[str]:
    """ENGINE:PRECISION[@BACKEND] for every process to start, edgecap's first (engine "edgecap-plain":
    a bundle's plain graphs, where "edgecap" runs its default, fused, ones)."""
    names = {"default": "edgecap", "plain": "edgecap-plain"}
    specs = [f"{names[form]}:{p}" + ("" if b == "cpu" else f"@{b}") for form in graph_forms for b in backends
             for p in precisions]
    for name in peers:
        specs += [f"{name}:{p}" for p in PEER_PRECISIONS[name] if p == "fp32" or p in precisions]
    return specs


def load_peer(name: str, precision: str, ckpt: str, threads: int | None, workdir: Path,
              encoder_prompt: tuple[list[int], int] | None = None):
    """A peer object with `runner(pixels, beams, new_tokens)` and `load_seconds`; raises if it cannot run.
    `encoder_prompt`: for a model whose encoder reads a prompt (Florence-2), (its ids, image tokens)."""
    from edgecap_export import peers as peer_mod

    if name == "pytorch":
        return peer_mod.PytorchPeer(ckpt, threads, encoder_prompt)
    if name == "pytorch-cuda":
        return peer_mod.PytorchPeer(ckpt, threads, encoder_prompt, device="cuda", fp16=precision == "fp16")
    if name == "optimum":
        return peer_mod.OptimumPeer(ckpt, threads, workdir, int8=precision == "int8")
    if name == "openvino":
        return peer_mod.OpenVINOPeer(ckpt, threads, workdir, int8=precision == "int8")
    raise ValueError(f"unknown peer {name!r}; available: {', '.join(PEERS)}")


def peer_python(arg: str | None) -> str:
    """The interpreter peers run under: --peer-python, else $EDGECAP_BENCH_PEER_PYTHON, else this one."""
    return arg or os.environ.get(PEER_PYTHON_ENV) or sys.executable


def run_child(python: str, argv: list[str], spec: str, floors: dict) -> tuple[list[dict], str | None]:
    """Run one engine in a child process; (row dicts, None) or ([], the reason it produced none).

    The child's output (stdout too: peers' libraries print there) is passed through to stderr as it
    comes, so stdout holds only the table; its last line is kept: a child that dies (a segfault,
    the OOM killer, an uncaught error) is reported by it.
    """
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        out = Path(tmp.name)
    cmd = [python, "-m", "edgecap.bench", *argv, "--engine", spec, "--floors", json.dumps(floors), "--rows-out", str(out)]
    tail: deque[str] = deque(maxlen=1)
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    except OSError as exc:
        out.unlink(missing_ok=True)
        return [], f"cannot start {python}: {exc.strerror}"
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stderr.write(line)
        if line.strip():
            tail.append(line.strip())
    rc = proc.wait()
    try:
        rows = json.loads(out.read_text()) if rc == 0 and out.stat().st_size else None
    except (OSError, ValueError):
        rows = None
    finally:
        out.unlink(missing_ok=True)
    if rows is None:
        reason = tail[0] if tail else f"exit status {rc}"
        return [], f"process failed ({reason})"[:300]
    return rows, None
