"""Reading a compiled kernel: SASS instruction mix, its loops, and how many programs fit on an SM.

Pure functions over ``cuobjdump`` text and resource numbers, so they are testable without a GPU;
``benchmarks.disasm`` feeds them the kernels Triton compiles for each sweep point.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

# Opcode families (the part before the first '.'), grouped by what they cost or feed.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "mma": ("HMMA", "HGMMA", "IMMA", "IGMMA", "QGMMA", "DMMA", "WGMMA"),
    "gload": ("LDG", "LDGSTS", "UTMALDG", "UBLKCP", "LDGDEPBAR"),
    "gstore": ("STG", "RED", "ATOMG", "UTMASTG"),
    "shared": ("LDS", "LDSM", "STS", "STSM"),
    # Format conversions, byte permutes and packed half/bf16 arithmetic: the work of turning a one-byte
    # cache or an fp32 tile into a matrix-unit operand.
    "convert": ("F2F", "F2FP", "I2F", "I2FP", "F2I", "F2IP", "PRMT", "HADD2", "HMUL2", "HFMA2"),
    "mufu": ("MUFU",),
    "fp32": ("FFMA", "FMUL", "FADD", "FMNMX", "FSEL", "FSETP", "FCHK", "FSWZADD"),
    "int": ("IMAD", "IADD3", "LEA", "LOP3", "SHF", "ISETP", "VIADD", "IMNMX", "VIMNMX", "SEL", "SGXT", "IABS",
            "UIADD3", "UIMAD", "ULEA", "ULOP3", "USHF", "UISETP", "USEL", "UMOV", "MOV", "IADD", "LOP", "SHL"),
    "shuffle": ("SHFL",),
    "sync": ("BAR", "DEPBAR", "WARPSYNC", "SYNCS", "MEMBAR", "ERRBAR", "CCTL", "FENCE"),
    "branch": ("BRA", "BRX", "JMP", "EXIT", "CALL", "RET", "BSSY", "BSYNC"),
}
_FAMILY_CATEGORY = {op: cat for cat, ops in CATEGORIES.items() for op in ops}
BRANCHES = ("BRA", "JMP")

_LINE = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")
_TARGET = re.compile(r"0x([0-9a-f]+)")


@dataclass(frozen=True)
class Instruction:
    address: int
    opcode: str  # with modifiers, e.g. "LDG.E.128"
    operands: str

    @property
    def family(self) -> str:
        return self.opcode.split(".", 1)[0]

    @property
    def category(self) -> str:
        return _FAMILY_CATEGORY.get(self.family, "other")

    def branch_target(self) -> int | None:
        if self.family not in BRANCHES:
            return None
        match = _TARGET.search(self.operands)
        return int(match.group(1), 16) if match else None


@dataclass
class Loop:
    """Instructions from a backward branch's target up to the branch: one iteration's static body."""

    start: int
    end: int
    instructions: list[Instruction] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.instructions)

    def mix(self) -> Counter:
        return Counter(i.category for i in self.instructions)

    def copy_groups_in_flight(self) -> int | None:
        """Asynchronous-copy groups the loop lets stay in flight where it waits for its copies: the
        smallest N of its ``DEPBAR.LE SB0, N`` (None: the loop does not wait for copies). 0 means each
        iteration waits for every copy issued so far, so none overlaps the next iteration's work."""
        depths = [int(m.group(1), 0) for i in self.instructions if i.family == "DEPBAR"
                  for m in [_COPY_WAIT.search(i.operands)] if m]
        return min(depths) if depths else None


_COPY_WAIT = re.compile(r"SB0,\s*(0x[0-9a-f]+|\d+)")


def parse_sass(text: str) -> dict[str, list[Instruction]]:
    """``cuobjdump -sass`` text -> instructions per function, in address order."""
    functions: dict[str, list[Instruction]] = {}
    current: list[Instruction] | None = None
    for line in text.splitlines():
        if "Function :" in line:
            current = functions.setdefault(line.split("Function :", 1)[1].strip(), [])
            continue
        match = _LINE.match(line)
        if match and current is not None:
            current.append(Instruction(int(match.group(1), 16), match.group(2), match.group(3).strip()))
    return functions


def find_loops(instructions: list[Instruction]) -> list[Loop]:
    """Every backward branch (a branch to its own address, the end-of-code trap, excluded), outermost first."""
    loops = []
    for inst in instructions:
        target = inst.branch_target()
        if target is None or target >= inst.address:
            continue
        body = [i for i in instructions if target <= i.address <= inst.address]
        loops.append(Loop(target, inst.address, body))
    return sorted(loops, key=lambda lp: (lp.start, -lp.end))


def main_loop(instructions: list[Instruction]) -> Loop | None:
    """The loop that does the work: most matrix instructions, then most global loads, then the largest."""
    loops = find_loops(instructions)
    if not loops:
        return None
    return max(loops, key=lambda lp: (lp.mix()["mma"], lp.mix()["gload"], lp.size))


def mix(instructions: list[Instruction]) -> Counter:
    return Counter(i.category for i in instructions)


@dataclass(frozen=True)
class SmLimits:
    """Per-SM resources of one architecture (CUDA occupancy rules; CUDA C programming guide, compute capabilities)."""

    registers: int = 65536
    register_unit: int = 256  # registers are given to a warp in multiples of this
    max_warps: int = 64
    max_ctas: int = 32
    shared_bytes: int = 228 * 1024
    shared_reserved_per_cta: int = 1024  # the driver keeps 1 KiB of each CTA's shared memory


ARCH_LIMITS = {
    80: SmLimits(shared_bytes=164 * 1024),  # A100
    86: SmLimits(max_warps=48, max_ctas=16, shared_bytes=100 * 1024),
    89: SmLimits(max_warps=48, max_ctas=24, shared_bytes=100 * 1024),  # L4, L40S
    90: SmLimits(),  # H100, H200
}


def ctas_per_sm(limits: SmLimits, registers: int, warps: int, shared_bytes: int) -> tuple[int, str]:
    """(programs resident on one SM, the resource that bounds it) for a kernel's registers per thread,
    warps per program and dynamic + static shared bytes per program."""
    regs_per_warp = -(-registers * 32 // limits.register_unit) * limits.register_unit
    bounds = {
        "warps": limits.max_warps // warps,
        "ctas": limits.max_ctas,
        "registers": limits.registers // (regs_per_warp * warps) if regs_per_warp else limits.max_ctas,
        "shared": limits.shared_bytes // (shared_bytes + limits.shared_reserved_per_cta),
    }
    resource = min(bounds, key=lambda k: (bounds[k], k != "registers"))
    return bounds[resource], resource


def resource_usage(text: str) -> dict[str, dict[str, int]]:
    """``cuobjdump -res-usage`` text -> {function: {"REG": .., "STACK": .., "SHARED": .., "LOCAL": ..}}."""
    usage: dict[str, dict[str, int]] = {}
    name = None
    for line in text.splitlines():
        if "Function " in line and line.strip().endswith(":"):
            name = line.strip()[len("Function "):-1].strip()
        elif name and "REG:" in line:
            usage[name] = {k: int(v) for k, v in re.findall(r"([A-Z]+(?:\[\d+\])?):(\d+)", line)}
            name = None
    return usage
