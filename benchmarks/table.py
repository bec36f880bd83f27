"""Benchmark rows and their markdown, with the standard library only.

Separate from common.py (which imports torch) so that benchmarks/merge_results.py can write the
GPU suite's summary even when torch itself is what broke on the machine.
"""
from dataclasses import dataclass, field
from typing import List, Optional


@dataclass
class Row:
    op: str
    impl: str
    shape: str
    ms: Optional[float]  # None: not timed (the row says why in extra)
    ms_p20: Optional[float]
    ms_p80: Optional[float]
    gbps: Optional[float] = None
    tflops: Optional[float] = None
    peak_mib: Optional[float] = None
    extra: dict = field(default_factory=dict)


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def markdown_table(rows: List[Row]) -> str:
    lines = ["| op | impl | shape | ms (p20-p80) | GB/s | TFLOP/s | peak MiB | notes |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        notes = ", ".join(f"{k}={v}" for k, v in r.extra.items())
        timing = "-" if r.ms is None else f"{r.ms:.3f} ({fmt(r.ms_p20, '.3f')}-{fmt(r.ms_p80, '.3f')})"
        lines.append(f"| {r.op} | {r.impl} | {r.shape} | {timing} | "
                     f"{fmt(r.gbps, '.0f')} | {fmt(r.tflops, '.1f')} | {fmt(r.peak_mib, '.0f')} | {notes} |")
    return "\n".join(lines)


def dict_table(records: List[dict]) -> str:
    """A markdown table of dicts (columns: every key, in first-seen order)."""
    columns = list(dict.fromkeys(k for r in records for k in r))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in records:
        cells = (format(r[c], ".4g") if isinstance(r.get(c), float) else
                 ", ".join(map(str, r[c])) if isinstance(r.get(c), list) else str(r.get(c, "")) for c in columns)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
