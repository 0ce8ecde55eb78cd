"""The pieces of tests/platform/arm64.sh that run without root or qemu: package unpacking that cannot
write outside the root, the instruction counter behind the kernel table, and the parity gate."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "platform"))

import armcpu  # noqa: E402
import captions  # noqa: E402
import debextract  # noqa: E402


def _deb(tmp: Path, name: str, build) -> Path:
    """A real .deb (dpkg-deb --build) whose files `build(root)` makes."""
    root = tmp / f"pkg-{name}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: 1\nArchitecture: all\nMaintainer: t <t@t>\nDescription: t\n")
    build(root)
    out = tmp / f"{name}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(out)], check=True, capture_output=True)
    return out


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb (Debian's packaging tool) is not installed")
def test_a_package_cannot_write_through_another_packages_absolute_symlink(tmp_path):
    outside = tmp_path / "host-dir"
    outside.mkdir()
    target = tmp_path / "root"
    target.mkdir()

    def with_link(root):  # an absolute symlink to a directory, as packages ship (/etc/alternatives...)
        (root / "etc").mkdir()
        (root / "etc" / "conf").symlink_to(outside)
        (root / "usr" / "bin").mkdir(parents=True)
        (root / "usr" / "bin" / "tool").write_text("tool")

    def through_link(root):
        (root / "etc" / "conf").mkdir(parents=True)
        (root / "etc" / "conf" / "planted").write_text("x")

    debextract.extract(_deb(tmp_path, "a", with_link), str(target))
    assert (target / "usr" / "bin" / "tool").read_text() == "tool"
    assert (target / "etc" / "conf").is_symlink()
    with pytest.raises(tarfile.FilterError):
        debextract.extract(_deb(tmp_path, "b", through_link), str(target))
    assert list(outside.iterdir()) == []


def test_instruction_counter_reads_encodings_not_mnemonics(tmp_path):
    log = tmp_path / "qemu.log"
    log.write_text(io.StringIO(
        "----------------\nIN: \n"
        "0x0000005500001000:  6e9e9400      udot     v0.4s, v0.16b, v30.16b\n"
        "0x0000005500001004:  4e9e9400      sdot     v0.4s, v0.16b, v30.16b\n"
        "0x0000005500001008:  6e9ea400      .byte    0x00, 0xa4, 0x9e, 0x6e\n"  # ummla, unknown to the disassembler
        "0x000000550000100c:  4e61cc20      fmla     v0.2d, v1.2d, v1.2d\n"  # double precision: not counted
        "0x0000005500001010:  4e410c20      fmla     v0.8h, v1.8h, v1.8h\n"
        "0x0000005500001014:  d503201f      nop      \n"
    ).getvalue())
    counts = armcpu.count([str(log)])
    assert counts["udot"] == 1 and counts["sdot"] == 1 and counts["ummla"] == 1 and counts["fmla.h"] == 1
    assert sum(counts.values()) == 4


def test_feature_names_follow_the_kernels_hwcap_order():
    assert armcpu.feature_names(1 << 20 | 1 << 1, 1 << 13) == ["asimd", "asimddp", "i8mm"]


def _dump(rows: dict[str, list[list[int]]]) -> dict:
    return {"results": {key: [{"image": f"im{i}.png", "tokens": t, "score": -1.0} for i, t in enumerate(tokens)]
                        for key, tokens in rows.items()}}


def test_the_gate_takes_fp32_differences_and_decisive_int8_ones_only():
    host = _dump({"b/fp32/beams1": [[1, 2], [3, 4]], "b/int8 fused/beams1": [[1, 2], [3, 4]],
                  "b/fp16/beams1": [[1, 2], [3, 4]], "b/int8/beams3": [[1, 2], [3, 4]]})
    other = _dump({"b/fp32/beams1": [[1, 2], [3, 4]], "b/int8 fused/beams1": [[1, 2], [3, 5]],
                   "b/fp16/beams1": [[1, 2], [9, 4]], "b/int8/beams3": [[1, 2], [3, 5]]})
    rows = {r["precision"] + f"/{r['beams']}": r for r in captions.compare(host, other)}
    assert rows["int8 fused/1"]["differ"] == [{"image": "im1.png", "host": [3, 4], "other": [3, 5]}]
    # an int8 greedy difference not yet judged counts as decisive; judged a tie, it passes
    assert captions.failures(list(rows.values())) == [rows["int8 fused/1"]]
    rows["int8 fused/1"]["decisive"] = 0
    assert captions.failures(list(rows.values())) == []
    other["results"]["b/fp32/beams1"][0]["tokens"] = [1, 7]
    assert [r["precision"] for r in captions.failures(captions.compare(host, other))] == ["fp32", "int8 fused"]
