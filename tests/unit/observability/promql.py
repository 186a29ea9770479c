"""Metric names in a PromQL expression (enough of PromQL for our rules and dashboards)."""

from __future__ import annotations

import re

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_LABEL_LISTS = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.IGNORECASE
)
_NAME = re.compile(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
     "bool", "offset", "inf", "nan"}
)  # fmt: skip


def grafana_to_promql(expr: str) -> str:
    """Grafana's variables replaced so the expression parses."""
    return (
        expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("$flag", ".*")
        .replace("$variant", ".*")
    )


def metric_names(expr: str) -> set[str]:
    """Names of the series an expression reads."""
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGES.sub("", text)
    text = _LABEL_LISTS.sub("", text)
    names = {m.group(1) for m in _NAME.finditer(text)}
    return {n for n in names if n.lower() not in _KEYWORDS and not re.fullmatch(r"\d.*", n)}


_SELECTOR = re.compile(r"(?<![\w:.$@])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()\s*(@\d+@)?")


def selectors(expr: str) -> list[str]:
    """The vector selectors an expression reads, matchers included: `name{label="value"}`."""
    blocks: list[str] = []

    def keep(match: re.Match[str]) -> str:
        blocks.append(match.group(0))
        return f"@{len(blocks) - 1}@"

    text = _MATCHERS.sub(keep, expr)
    text = _STRINGS.sub('""', text)
    text = _RANGES.sub("", text)
    text = _LABEL_LISTS.sub("", text)
    found = []
    for match in _SELECTOR.finditer(text):
        name, block = match.group(1), match.group(2)
        if name.lower() in _KEYWORDS:
            continue
        found.append(name + (blocks[int(block.strip("@"))] if block else ""))
    return found


def label_values_selector(query: str) -> str:
    """The selector of a Grafana `label_values(selector, label)` variable query."""
    inner = query.strip().removeprefix("label_values(").removesuffix(")")
    return inner.rsplit(",", 1)[0].strip()
