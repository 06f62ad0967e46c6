"""Parser of the original repositories' result files (read in place; never copied).

Formats (SPEC rll §8.2, osm_caa §10.1), values are fractions and come back in percent:

* one record per line, comma-separated ``key: value`` pairs -- ``Recall_*.txt``, ``Recall.txt``,
  ``CUB_Recall.txt`` (``iter: 1000, rank1: 0.558, rank2: ...``), the MARS files
  (``iter: 60000, rank1: 0.847475, ..., mAP: 0.723538``) and LPW (``split_index:1,iter:55000, rank1:...``);
  ``rankK`` becomes ``R@K``;
* ``Record_concat.txt`` (Market-1501): an ``iter: N,`` line followed by indented lines
  ``single query: mAP = x, r1 precision = y`` and the three multi-query variants, which become
  ``single_query/mAP``, ``single_query/R@1``, ``multi_query_avg/...``, ``multi_query_max/...``,
  ``multi_query_max_rerank/...``.

Blank lines are skipped; repeated runs (several files contain the same run appended twice, or an
extra first line) are kept in file order: :func:`at_iter` picks the last record of an iteration.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from rll_repro.errors import FormatError

_PAIR = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_ ]*?)\s*:\s*([-+0-9.eE]+)\s*$")
_MARKET = re.compile(r"^\s*(.+?):\s*mAP\s*=\s*([-+0-9.eE]+)\s*,\s*r1 precision\s*=\s*([-+0-9.eE]+)\s*$")
_MARKET_NAMES = {
    "single query": "single_query",
    "multiple queries with avg pooling": "multi_query_avg",
    "multiple queries with max pooling": "multi_query_max",
    "multiple queries with max pooling + re-ranking": "multi_query_max_rerank",
}
_META = {"iter", "split_index"}


@dataclass
class Record:
    """One evaluated checkpoint: ``iter``, metrics in percent, and where it came from."""

    iter: int | None
    metrics: dict[str, float]
    line: int
    extra: dict[str, int] = field(default_factory=dict)


def _metric(key: str) -> str:
    m = re.fullmatch(r"rank(\d+)", key)
    return f"R@{m.group(1)}" if m else key


def _number(text: str, path, lineno: int) -> float:
    try:
        return float(text)
    except ValueError:
        raise FormatError(f"{path}:{lineno}: {text!r} is not a number") from None


def parse_text(text: str, path: str | Path = "<text>") -> list[Record]:
    """Records of a result file's text (see the module docstring for the formats)."""
    records: list[Record] = []
    current: Record | None = None  # an open Record_concat.txt block
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        market = _MARKET.match(line)
        if market:
            name = _MARKET_NAMES.get(market.group(1).strip())
            if current is None or name is None:
                raise FormatError(f"{path}:{lineno}: unexpected Market-1501 line {line[:60]!r}")
            current.metrics[f"{name}/mAP"] = round(100 * _number(market.group(2), path, lineno), 10)
            current.metrics[f"{name}/R@1"] = round(100 * _number(market.group(3), path, lineno), 10)
            continue
        pairs = [p for p in line.split(",") if p.strip()]
        values: dict[str, float] = {}
        for pair in pairs:
            m = _PAIR.match(pair)
            if not m:
                raise FormatError(f"{path}:{lineno}: cannot read {pair.strip()[:60]!r} as 'key: value'")
            values[m.group(1).strip()] = _number(m.group(2), path, lineno)
        if "iter" not in values:
            raise FormatError(f"{path}:{lineno}: no 'iter' in {line[:60]!r}")
        metrics = {_metric(k): round(100 * v, 10) for k, v in values.items() if k not in _META}
        extra = {k: int(v) for k, v in values.items() if k in _META and k != "iter"}
        record = Record(int(values["iter"]), metrics, lineno, extra)
        records.append(record)
        current = record if not metrics else None
    return records


def parse_result_file(path: str | Path) -> list[Record]:
    """Records of one original result file, in file order."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise FormatError(f"{path}: not a text result file ({exc.reason})") from None
    records = parse_text(text, path)
    if not records:
        raise FormatError(f"{path}: no result lines")
    return records


def at_iter(records: list[Record], iteration: int, keys: set[str] | None = None) -> dict[str, float]:
    """Metrics of the last record of ``iteration`` (optionally the last one holding all ``keys``)."""
    for record in reversed(records):
        if record.iter == iteration and (keys is None or keys <= set(record.metrics)):
            return dict(record.metrics)
    raise FormatError(f"no record for iteration {iteration}")
