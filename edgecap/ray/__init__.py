"""Captioning on Ray Data: `caption_dataset` for a user's own Ray program, and `edgecap feed --ray`.

Needs the `ray` extra (`pip install 'edgecap[ray]'`; from a checkout `pip install '.[ray]'`): Ray
with Ray Data (pyarrow, pandas). The rest of edgecap never imports Ray. See docs/ray.md.

This package is named like the `ray` package it uses: its modules import Ray absolutely
(`import ray`), never relatively, so the two cannot be confused.
"""

from __future__ import annotations

from edgecap.extras import install_command

RAY_HINT = install_command("ray")  # the form that works for this installation, as every other hint

try:
    import ray.data  # noqa: F401 - fail here, with the hint, rather than deep inside a run
except ImportError as exc:
    raise ImportError(f"edgecap.ray needs Ray Data ({exc.name or 'ray'} is missing): {RAY_HINT}") from exc

from .dataset import caption_dataset, read_feed  # noqa: E402
from .driver import RayFeedConfig, run_ray_feed  # noqa: E402

__all__ = ["RAY_HINT", "RayFeedConfig", "caption_dataset", "read_feed", "run_ray_feed"]
