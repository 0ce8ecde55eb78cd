"""The install command for an optional extra, in the form that works for this installation.

`pip install 'edgecap[feeds]'` only works where edgecap is on a package index. Run from a clone (an
editable install, or the source tree itself) or installed from one with `pip install .`, the command
that works is `pip install '/that/checkout[feeds]'`; hints name whichever applies.
"""

from __future__ import annotations

import json
import shlex
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse


@lru_cache(maxsize=None)
def _origin() -> str:
    """What goes before `[extra]`: the checkout (or wheel file) edgecap came from, else its name."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "edgecap" / "__init__.py").is_file():
        return str(checkout)
    # `pip install .` copies the package away from the clone but records where from (PEP 610)
    for dist in metadata.distributions(name="edgecap"):
        try:
            url = urlparse(json.loads(dist.read_text("direct_url.json") or "{}").get("url", ""))
        except ValueError:
            continue
        if url.scheme == "file" and url.path:
            return unquote(url.path)
    return "edgecap"


def install_command(extra: str) -> str:
    """e.g. `pip install '/home/me/edgecap[feeds]'` (from a clone) or `pip install 'edgecap[feeds]'`."""
    return "pip install " + shlex.quote(f"{_origin()}[{extra}]")
