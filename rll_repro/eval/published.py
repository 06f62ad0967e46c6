"""The published numbers, as package data, with a small query API.

``rll_repro/eval/published/{rll,osm_caa,baselines}.json`` are copies of ``../shared/reference/*/
published.json`` (the papers' slide/poster tables, the original repositories' result files, the
baseline methods' README tables). Keys are paths: ``<file>/<dataset>/<group>/<entry>``, e.g.

    >>> get("rll/SOP/paper/RLL-(L,M,H)")
    {'R@1': 79.8, 'R@10': 91.3, 'R@100': 96.3, 'NMI': 90.4, 'source': 'rll: RLL_CVPR19_V01.pdf slide 18 ...'}

Every value comes back in percent (the RLL file stores its repository-file entries, the ``repo_*``
groups, as fractions; they are multiplied by 100 here), metric names are normalised (``R1`` ->
``R@1``), nested groups are flattened with ``/`` (``single_query/mAP``), and ``null`` (not reported)
is left out. ``source`` is the nearest ``source`` field on the path, prefixed by the file name.
"""
from __future__ import annotations

import difflib
import functools
import json
import re
from importlib import resources

from rll_repro.errors import DataError

SOURCES = ("rll", "osm_caa", "baselines")
RECORDED = ("demo",)
"""Numbers this repository records itself (not copies of ../shared): ``demo.json`` holds the
embedded demo's expected table (``rll-repro reproduce demo``)."""
_METRIC = re.compile(r"^(R@?\d+|NMI|F1|mAP)$")


@functools.lru_cache(maxsize=None)
def load(source: str) -> dict:
    """The raw JSON of one source file (``rll``, ``osm_caa`` or ``baselines``)."""
    if source not in SOURCES + RECORDED:
        raise DataError(f"unknown published source {source!r} (choose from {', '.join(SOURCES + RECORDED)})")
    text = resources.files("rll_repro.eval").joinpath("published", f"{source}.json").read_text("utf-8")
    return json.loads(text)


def metric_name(key: str) -> str:
    """``R1`` -> ``R@1``; everything else unchanged."""
    m = re.fullmatch(r"R(\d+)", key)
    return f"R@{m.group(1)}" if m else key


def _is_fraction(source: str, path: list[str]) -> bool:
    return source == "rll" and any(part.startswith("repo_") for part in path)


def _has_metrics(node) -> bool:
    if not isinstance(node, dict):
        return False
    return any((_METRIC.match(k) and isinstance(v, (int, float)) and not isinstance(v, bool))
               or (isinstance(v, dict) and not k.startswith("_") and _has_metrics(v))
               for k, v in node.items())


def _flatten(node: dict, scale: float, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in node.items():
        if k.startswith("_"):
            continue
        if isinstance(v, dict):
            out.update(_flatten(v, scale, f"{prefix}{k}/"))
        elif _METRIC.match(k) and isinstance(v, (int, float)) and not isinstance(v, bool):
            out[prefix + metric_name(k)] = round(float(v) * scale, 10)
    return out


def _resolve(key: str) -> tuple[str, list[str], list[dict]]:
    """Split ``key`` into (source, path parts, nodes along the path), matching keys greedily."""
    source, _, rest = key.partition("/")
    node = load(source)
    parts: list[str] = []
    nodes = [node]
    while rest:
        if not isinstance(node, dict):
            raise DataError(f"published key {key!r}: {'/'.join([source] + parts)} is not a group")
        match = None
        for candidate in sorted(node, key=len, reverse=True):  # longest first: keys may contain '/'
            if rest == candidate or rest.startswith(candidate + "/"):
                match = candidate
                break
        if match is None:
            close = difflib.get_close_matches(key, keys(), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see 'rll_repro.eval.published.keys()'"
            raise DataError(f"no published entry {key!r}{hint}")
        parts.append(match)
        node = node[match]
        nodes.append(node)
        rest = rest[len(match) + 1:]
    return source, parts, nodes


def get(key: str) -> dict:
    """Metrics (percent) of one published entry plus its ``source``; see the module docstring."""
    source, parts, nodes = _resolve(key)
    node = nodes[-1]
    if not _has_metrics(node):
        raise DataError(f"published entry {key!r} holds no numbers")
    scale = 100.0 if _is_fraction(source, parts) else 1.0
    out: dict = _flatten(node, scale)
    origin = next((n["source"] for n in reversed(nodes) if isinstance(n, dict) and isinstance(n.get("source"), str)),
                  None)
    out["source"] = f"{source}: {origin}" if origin else f"{source}/published.json"
    return out


def keys(prefix: str = "") -> list[str]:
    """Every key that :func:`get` accepts (entries with numbers), optionally under ``prefix``."""
    found: list[str] = []

    def walk(node, path):
        if isinstance(node, dict):
            direct = any(_METRIC.match(k) and isinstance(v, (int, float)) for k, v in node.items())
            if path and (direct or "source" in node) and _has_metrics(node):
                found.append("/".join(path))
            for k, v in node.items():
                if isinstance(v, dict) and not k.startswith("_"):
                    walk(v, path + [k])

    for source in SOURCES + RECORDED:
        walk(load(source), [source])
    return [k for k in found if k.startswith(prefix)]
