"""The emulated ARM64 CPU, as user space sees it, and which int8 instructions a run executed.

Standard library only: it runs inside the emulated root (before onnxruntime can be imported) and
on the host (counting instructions in qemu's logs).

    python3 armcpu.py cpuinfo          # a /proc/cpuinfo for the CPU qemu emulates (QEMU_CPU)
    python3 armcpu.py features         # JSON: MIDR and the HWCAP feature names
    python3 armcpu.py count LOG...     # JSON: int8/SME instructions in qemu `-d in_asm` logs

Why a cpuinfo of our own: qemu-user 7.2 shows the host's x86 /proc/cpuinfo to the guest, and
onnxruntime's CPU detection (pytorch/cpuinfo) then crashes while parsing it. The kernel's own
format is reproduced (arch/arm64/kernel/cpuinfo.c in Linux): MIDR from the emulated CPU's
register, features from the HWCAP words qemu hands the process (which is also what
pytorch/cpuinfo and MLAS read to choose kernels).
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import re
import struct
import subprocess
import sys
from collections import Counter

# Linux's names for AT_HWCAP / AT_HWCAP2 bits, in bit order (arch/arm64/kernel/cpuinfo.c, hwcap_str)
HWCAP = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc "
         "dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg").split()
HWCAP2 = ("dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm "
          "svebf16 i8mm bf16 dgh rng bti mte ecv afp rpres mte3 sme smei16i64 smef64f64 smei8i32 smef16f32 "
          "smeb16f32 smef32f32 smefa64 wfxt ebf16 sveebf16").split()
AT_HWCAP, AT_HWCAP2 = 16, 26

# MIDR_EL1 of qemu's models, used only if reading the register fails
MIDR_FALLBACK = {"cortex-a53": 0x410FD034, "cortex-a57": 0x411FD070, "cortex-a72": 0x410FD083,
                 "cortex-a76": 0x414FD0B1, "neoverse-n1": 0x414FD0C1}

# What the int8 GEMM kernels (and fp16 ones) are built from. Encodings (fixed bits, mask) from the Arm ARM, so the
# count does not depend on whether qemu's disassembler knows the mnemonic.
INSTRUCTIONS = {
    "sdot": [(0x0E809400, 0xBFE0FC00), (0x0F80E000, 0xBFC0F400), (0x44800000, 0xFFA0FC00), (0x44A00000, 0xFFA0FC00)],
    "udot": [(0x2E809400, 0xBFE0FC00), (0x2F80E000, 0xBFC0F400), (0x44800400, 0xFFA0FC00), (0x44A00400, 0xFFA0FC00)],
    "usdot": [(0x0E809C00, 0xBFE0FC00), (0x0F80F000, 0xBFC0F400), (0x44807800, 0xFFE0FC00)],
    "sudot": [(0x0F00F000, 0xBFC0F400)],
    "smmla": [(0x4E80A400, 0xFFE0FC00), (0x45009800, 0xFFE0FC00)],
    "ummla": [(0x6E80A400, 0xFFE0FC00), (0x45C09800, 0xFFE0FC00)],
    "usmmla": [(0x4E80AC00, 0xFFE0FC00), (0x45809800, 0xFFE0FC00)],
    "smopa/umopa (SME)": [(0xA0800000, 0xFEC00018)],
    # half-precision arithmetic (FEAT_FP16): an fp16 GEMM that computes in fp16, not converted to fp32
    "fmla.h": [(0x0E400C00, 0xBFE0FC00), (0x0F001000, 0xBFC0F400)],
}
# qemu's in_asm lines: "0x0000005502a1b3c4:  4e9e9400      sdot     v0.4s, ..."
_LINE = re.compile(r"^\s*0x[0-9a-fA-F]+:\s+([0-9a-fA-F]{8})\b")


def hwcaps() -> tuple[int, int]:
    libc = ctypes.CDLL(None)
    libc.getauxval.restype = ctypes.c_ulong
    libc.getauxval.argtypes = [ctypes.c_ulong]
    return libc.getauxval(AT_HWCAP), libc.getauxval(AT_HWCAP2)


def feature_names(hwcap: int, hwcap2: int) -> list[str]:
    return [n for i, n in enumerate(HWCAP) if hwcap >> i & 1] + [n for i, n in enumerate(HWCAP2) if hwcap2 >> i & 1]


def _read_midr_here() -> int:
    """MIDR_EL1 read with `mrs` (Linux and qemu-user emulate EL0 reads of the ID registers)."""
    code = struct.pack("<II", 0xD5380000, 0xD65F03C0)  # mrs x0, midr_el1; ret
    buf = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    buf.write(code)
    fn = ctypes.CFUNCTYPE(ctypes.c_uint64)(ctypes.addressof(ctypes.c_char.from_buffer(buf)))
    return int(fn())


def midr() -> int:
    # in a child process: a CPU model that traps the read kills only the child
    try:
        out = subprocess.run([sys.executable, __file__, "midr"], capture_output=True, text=True, timeout=120)
        if out.returncode == 0 and out.stdout.strip():
            return int(out.stdout.strip(), 16)
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    return MIDR_FALLBACK.get(os.environ.get("QEMU_CPU", ""), 0)


def cpuinfo() -> str:
    m = midr()
    features = " ".join(feature_names(*hwcaps()))
    block = (f"BogoMIPS\t: 50.00\nFeatures\t: {features}\nCPU implementer\t: 0x{m >> 24 & 0xFF:02x}\n"
             f"CPU architecture: 8\nCPU variant\t: 0x{m >> 20 & 0xF:x}\nCPU part\t: 0x{m >> 4 & 0xFFF:03x}\n"
             f"CPU revision\t: {m & 0xF}\n\n")
    return "".join(f"processor\t: {i}\n{block}" for i in range(os.cpu_count() or 1))


def count(paths: list[str]) -> dict[str, int]:
    """Translated instructions of each kind of interest in qemu `-d in_asm` logs (each translated
    block is logged once, so these count distinct code, not executions)."""
    found: Counter[str] = Counter()
    for path in paths:
        with open(path, errors="replace") as f:
            for line in f:
                m = _LINE.match(line)
                if not m:
                    continue
                word = int(m.group(1), 16)
                for name, forms in INSTRUCTIONS.items():
                    if any(word & mask == bits for bits, mask in forms):
                        found[name] += 1
    return {name: found.get(name, 0) for name in INSTRUCTIONS}


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else ""
    if cmd == "midr":
        print(f"{_read_midr_here():08x}")
    elif cmd == "cpuinfo":
        sys.stdout.write(cpuinfo())
    elif cmd == "features":
        hw, hw2 = hwcaps()
        print(json.dumps({"qemu_cpu": os.environ.get("QEMU_CPU"), "midr": f"0x{midr():08x}",
                          "features": feature_names(hw, hw2)}))
    elif cmd == "count":
        print(json.dumps(count(argv[1:])))
    else:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
