"""Unpack Debian packages into a root directory without letting any write land outside it.

Used by tests/platform/arm64.sh instead of debootstrap's second stage: the arm64 packages are
unpacked on the host (seconds) rather than installed by dpkg under emulation (~20 minutes). Their
maintainer scripts do not run; the script does by hand the few things it needs from them.

`dpkg-deb --fsys-tarfile | tar -x` (what debootstrap does) follows symlinks already in the tree, so
a package writing through another package's absolute symlink would write to the host. Python's
`tar` extraction filter refuses every member whose path, symlinks resolved, leaves the root; a
member replacing an existing file or symlink unlinks it first (without following it), so an
absolute link left by an earlier package is never resolved on the host.

    python3 debextract.py ROOT PACKAGE.deb...
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([os.path.realpath(path), root]) == root


def extract(deb: Path, root: str) -> int:
    """Unpack one package's files into `root`; the number of members written."""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    count = 0

    def guard(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        target = os.path.join(dest, member.name)
        parent = os.path.dirname(target.rstrip("/"))
        if not _inside(parent, root):
            raise tarfile.OutsideDestinationError(member, target)
        if not member.isdir() and os.path.lexists(target) and not os.path.isdir(target):
            # replaced, as dpkg does: a symlink is removed itself (never what it points to), a
            # file another hard link shares is not truncated under that link
            os.unlink(target)
        return tarfile.tar_filter(member, dest)

    with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        for member in tar:
            # a directory member where a symlink to a directory stands (merged /usr: bin -> usr/bin)
            # keeps the symlink, as dpkg does
            if member.isdir() and os.path.islink(os.path.join(root, member.name)):
                continue
            tar.extract(member, root, filter=guard)
            count += 1
    if proc.wait() != 0:
        raise RuntimeError(f"dpkg-deb --fsys-tarfile {deb} failed with status {proc.returncode}")
    return count


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    root = os.path.realpath(argv[0])
    for deb in argv[1:]:
        extract(Path(deb), root)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
