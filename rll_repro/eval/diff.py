"""Compare evaluation results with published numbers or with another RESULTS.json.

A RESULTS.json is a JSON object of percentages, ``{"R@1": 79.1, "R@10": ..., "NMI": ...}``; nested
objects are flattened with ``/`` (``single_query/mAP``) and keys starting with ``_`` (metadata) are
ignored. A reference is a published key (``rll/SOP/paper/RLL-(L,M,H)``, see
:mod:`rll_repro.eval.published`), another RESULTS.json, or an original result file with the
iteration after ``@`` (``.../Recall_concat_d64.txt@30000``).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from rll_repro.errors import DataError, FormatError


@dataclass
class Row:
    metric: str
    ours: float | None
    reference: float | None
    source: str

    @property
    def delta(self) -> float | None:
        if self.ours is None or self.reference is None:
            return None
        return self.ours - self.reference


def flatten_numbers(obj: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in obj.items():
        if str(key).startswith("_"):
            continue
        if isinstance(value, dict):
            out.update(flatten_numbers(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


def load_results(path: str | Path) -> dict[str, float]:
    """The numeric metrics of a RESULTS.json (FormatError if it is not a JSON object of numbers)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path}: not a JSON results file ({exc})") from None
    if not isinstance(obj, dict):
        raise FormatError(f"{path}: expected a JSON object of metrics, got {type(obj).__name__}")
    numbers = flatten_numbers(obj)
    if not numbers:
        raise FormatError(f"{path}: no numeric metrics")
    return numbers


def resolve_reference(spec: str) -> tuple[dict[str, float], str]:
    """(metrics, source label) of a published key, a RESULTS.json, or ``RESULTFILE.txt@ITER``."""
    path_part, _, iteration = spec.rpartition("@") if "@" in spec else (spec, "", "")
    if Path(spec).suffix == ".json" and Path(spec).exists():
        return load_results(spec), spec
    if path_part and Path(path_part).is_file():
        from rll_repro.eval.resultfiles import at_iter, parse_result_file

        try:
            it = int(iteration)
        except ValueError:
            raise DataError(f"{spec}: the part after '@' must be an iteration number") from None
        return at_iter(parse_result_file(path_part), it), f"{Path(path_part).name} iter {it}"
    if Path(spec).exists():
        if Path(spec).suffix == ".txt":
            raise DataError(f"{spec}: give the iteration of a result file as {spec}@ITER")
        return load_results(spec), spec
    from rll_repro.eval import published

    entry = published.get(spec)
    source = entry.pop("source")
    return entry, source


def compare(ours: dict[str, float], reference: dict[str, float], source: str,
            metrics: list[str] | None = None) -> list[Row]:
    """Rows for every metric of either side (in our order, then the reference's), or just ``metrics``."""
    names = list(metrics) if metrics else list(dict.fromkeys([*ours, *reference]))
    rows = [Row(m, ours.get(m), reference.get(m), source) for m in names]
    if not any(r.delta is not None for r in rows):
        raise DataError(f"no metric in common between the results ({', '.join(ours) or 'none'}) and "
                        f"{source} ({', '.join(reference) or 'none'})")
    return rows


def _over(row: Row, tolerance: float, nmi_tolerance: float | None) -> bool:
    """|delta| above the row's tolerance (NMI rows: ``nmi_tolerance`` where given); NaN is over."""
    if row.delta is None:
        return False
    allowed = nmi_tolerance if nmi_tolerance is not None and row.metric.split("/")[-1] == "NMI" else tolerance
    return math.isnan(row.delta) or abs(row.delta) > allowed + 1e-9


def exceeded(rows: list[Row], tolerance: float, nmi_tolerance: float | None = None) -> list[Row]:
    """Rows whose |delta| is above ``tolerance`` (percentage points; NMI rows against
    ``nmi_tolerance`` where given); a NaN delta counts as exceeded."""
    return [r for r in rows if _over(r, tolerance, nmi_tolerance)]


def format_table(rows: list[Row], tolerance: float, ours_label: str = "ours",
                 reference_label: str = "published", nmi_tolerance: float | None = None) -> str:
    """A plain-text side-by-side table: metric, ours, reference, delta, source (and a mark when over)."""
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    header = ("metric", ours_label, reference_label, "delta", "source")
    body = []
    for r in rows:
        flag = ""
        if _over(r, tolerance, nmi_tolerance):
            flag = "  <-- over"
        delta = "-" if r.delta is None else f"{r.delta:+.2f}"
        body.append((r.metric, fmt(r.ours), fmt(r.reference), delta, r.source + flag))
    widths = [max(len(str(x[i])) for x in [header, *body]) for i in range(4)]
    lines = ["  ".join([str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in
                        enumerate(zip(line[:4], widths))] + [line[4]]) for line in [header, *body]]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
