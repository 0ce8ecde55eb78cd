"""What this machine can spare, and what a decode will ask of it: checked before allocating, so an
absurd option is an OptionsError with the numbers, not the kernel's OOM killer (`--num-beams 1000000`
allocated 18.9 GB and was killed)."""

from __future__ import annotations

import os
from pathlib import Path

from .backends import cache_bucket
from .manifest import Architecture

# Per decoder row, the float32 score arrays of one step that live at once in beam search: the
# logits, their log-softmax, the accumulated scores, top-k's negated copy (4 bytes each) and its
# int64 partition indices (8).
_SCORE_BYTES_PER_TOKEN = 4 * 5 + 8
_SEQUENCE_BYTES_PER_STEP = 8 * 6  # token, score and beam-index histories, running and finished


def decoding_state_bytes(arch: Architecture, rows: int, steps: int, half: bool = False) -> int:
    """Bytes a decode of `rows` rows (images x beams) over `steps` positions allocates at its peak."""
    slots = cache_bucket(steps, steps)
    cache = arch.decoder_layers * 2 * arch.decoder_heads * arch.head_dim * slots * (2 if half else 4)
    return rows * (cache + _SCORE_BYTES_PER_TOKEN * arch.vocab_size + _SEQUENCE_BYTES_PER_STEP * steps)


def available_memory() -> int | None:
    """Bytes this process can still allocate: the smaller of the system's available memory and what
    its cgroup (container) limit leaves; None where neither can be read."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
                break
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            found.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    if not found and hasattr(os, "sysconf"):
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            pass
    return min(found) if found else None
