"""`loopgate evaluators agreement`: how each evaluator's scores agree with people, over time.

Reads evaluation and feedback events (their metadata: no content keys needed) from a spool
or Kafka, and prints `rollout.agreement.agreement()` per evaluator, version and window: AUC
of the score for thumbs up vs down, Spearman with ratings, and the AUC's trend.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli._common import CliError, console, fail, parse_time, print_json
from cli.events import CONFIG, KAFKA, SINCE, SPOOL

if TYPE_CHECKING:
    from rich.console import RenderableType

    from rollout.agreement import Agreement

# Fewer thumbs (or ratings) than this in a window: its AUC (or Spearman) is shown, marked.
MIN_LABELS = 20
# An AUC change smaller than this between the first and last window is "steady".
STEADY = 0.05
_WINDOW = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
WINDOW = typer.Option(
    "--window", help="Window of evaluation time: 1h, 6h, 1d, 1w... or `all` (one row per version)"
)


def parse_window(text: str) -> float | None:
    """`1h`, `30m`, `1d`, `2w` as seconds; `all` as None (no windows)."""
    if text.strip().lower() == "all":
        return None
    match = _WINDOW.match(text)
    if not match or int(match.group(1)) == 0:
        raise typer.BadParameter(
            f"{text!r} is neither a window (30m, 1h, 1d, 1w) nor `all`", param_hint="--window"
        )
    return float(int(match.group(1)) * _SECONDS[match.group(2)])


# --- reading -----------------------------------------------------------------------------


def _spool_lines(root: Path) -> Iterator[bytes]:
    """Every line on disk in every folder, replayed or not (agreement wants all history)."""
    from feedback.sinks.spool import SpoolPosition
    from feedback.sinks.spool_reader import SpoolReader, spool_folders

    for folder in spool_folders(root):
        yield from SpoolReader(folder, SpoolPosition(0, 0)).read()


def _kafka_lines(servers: list[str]) -> list[bytes]:
    from feedback.schema import EVALUATIONS_TOPIC, FEEDBACK_TOPIC
    from feedback.sinks.kafka_reader import TopicReader

    with TopicReader(servers, [EVALUATIONS_TOPIC, FEEDBACK_TOPIC]) as reader:
        return reader.backlog(None)


def split_events(
    lines: Iterable[bytes], since: datetime | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(evaluations, feedback) among the lines, from `since` on; other events are skipped."""
    from cli.events import Filter, parse_event

    wanted = Filter(types={"evaluation", "feedback"}, since=since)
    evaluations: list[dict[str, Any]] = []
    feedback: list[dict[str, Any]] = []
    for line in lines:
        event = parse_event(line)
        if event is None or not wanted.matches(event):
            continue
        body = event.get("body") or {}
        if event.get("type") == "feedback":
            feedback.append(event)
        elif isinstance(body.get("score"), int | float) and body.get("response_id"):
            evaluations.append(event)
    return evaluations, feedback


# --- the numbers per version --------------------------------------------------------------


def _thumbs(row: Agreement) -> int:
    return row.thumbs_up + row.thumbs_down


def trend(rows: list[Agreement]) -> dict[str, Any] | None:
    """The AUC's change from the first to the last window with MIN_LABELS thumbs (None: <2)."""
    trusted = [(r, r.auc) for r in rows if r.auc is not None and _thumbs(r) >= MIN_LABELS]
    if len(trusted) < 2:
        return None
    (first, auc_from), (last, auc_to) = trusted[0], trusted[-1]
    change = auc_to - auc_from
    direction = "steady" if abs(change) < STEADY else ("rising" if change > 0 else "falling")
    return {
        "from": first.window_start, "to": last.window_start, "auc_from": auc_from,
        "auc_to": auc_to, "change": change, "direction": direction, "windows": len(trusted),
    }  # fmt: skip


def report(rows: list[Agreement], window_s: float | None) -> list[dict[str, Any]]:
    """Per (evaluator, version): its windows, whether any label met a score, and the trend."""
    grouped: dict[tuple[str, str], list[Agreement]] = {}
    for row in rows:
        grouped.setdefault((row.evaluator, row.version), []).append(row)
    out = []
    for (evaluator, version), windows in grouped.items():
        labelled = any(_thumbs(w) or w.rated for w in windows)
        out.append({
            "evaluator": evaluator,
            "version": version,
            "labelled": labelled,
            "windows": [
                {**w.model_dump(exclude={"evaluator", "version"}),
                 "window_start": _iso(w.window_start),
                 "few_thumbs": w.auc is not None and _thumbs(w) < MIN_LABELS,
                 "few_ratings": w.spearman is not None and w.rated < MIN_LABELS}
                for w in windows
            ],
            "trend": _trend_json(trend(windows)) if window_s is not None else None,
        })  # fmt: skip
    return out


def _iso(start: float | None) -> str | None:
    return None if start is None else datetime.fromtimestamp(start, UTC).isoformat()


def _trend_json(found: dict[str, Any] | None) -> dict[str, Any] | None:
    if found is None:
        return None
    return {**found, "from": _iso(found["from"]), "to": _iso(found["to"])}


# --- rendering ---------------------------------------------------------------------------


def _label(start: str | None, window_s: float | None) -> str:
    if start is None or window_s is None:
        return "all"
    when = datetime.fromisoformat(start)
    if window_s % 86400 == 0:
        return when.strftime("%Y-%m-%d")
    return when.strftime("%m-%d %H:%M")


def _cells(window: dict[str, Any], window_s: float | None) -> list[str]:
    auc, rho = window["auc"], window["spearman"]
    return [
        _label(window["window_start"], window_s),
        str(window["scored"]),
        str(window["thumbs_up"]),
        str(window["thumbs_down"]),
        str(window["rated"]),
        "-" if auc is None else f"{auc:.2f}{'*' if window['few_thumbs'] else ''}",
        "-" if rho is None else f"{rho:+.2f}{'*' if window['few_ratings'] else ''}",
    ]


_HEADERS = ["window", "scored", "up", "down", "rated", "AUC", "Spearman"]


def _table(headers: list[str], rows: list[list[str]]) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for i, name in enumerate(headers):
        # The last six columns are numbers; the ones before them name the row.
        number = i >= len(headers) - 6
        table.add_column(name, justify="right" if number else "left", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table


def _width(headers: list[str], rows: list[list[str]]) -> int:
    """What _table() takes: the widest cell per column, and three spaces between columns."""
    widths = [max(len(c) for c in column) for column in zip(headers, *rows, strict=True)]
    return sum(widths) + 3 * (len(widths) - 1)


def _trend_line(found: dict[str, Any] | None, window_s: float | None) -> str:
    if found is None:
        return f"trend: needs two windows with {MIN_LABELS}+ thumbs"
    return (
        f"trend: AUC {found['auc_from']:.2f} ({_label(found['from'], window_s)}) -> "
        f"{found['auc_to']:.2f} ({_label(found['to'], window_s)}), "
        f"{found['change']:+.2f}, {found['direction']}"
    )


def render(doc: dict[str, Any], width: int) -> list[RenderableType]:
    """The report for a terminal `width` wide: one table when it fits, else one per version."""
    from rich.markup import escape
    from rich.text import Text

    window_s = doc["window_s"]
    versions = doc["evaluators"]
    if not versions:
        return [Text(f"no evaluation events in {doc['source']}{_since(doc)}")]
    out: list[RenderableType] = []
    labelled = [v for v in versions if v["labelled"]]
    rows = [[v["evaluator"], v["version"], *_cells(w, window_s)] for v in labelled
            for w in v["windows"]]  # fmt: skip
    headers = ["evaluator", "version", *_HEADERS]
    if labelled and _width(headers, rows) <= width:
        out.append(_table(headers, rows))
        for v in labelled:
            if window_s is not None:
                out.append(Text(f"{v['evaluator']} ({v['version']}) " + _trend_line(v["trend"],
                                window_s)))  # fmt: skip
    else:
        for v in labelled:
            out.append(
                Text.from_markup(
                    f"[bold]evaluator {escape(v['evaluator'])}[/] ({escape(v['version'])})"
                )
            )
            out.append(_table(_HEADERS, [_cells(w, window_s) for w in v["windows"]]))
            if window_s is not None:
                out.append(Text(_trend_line(v["trend"], window_s)))
            out.append(Text(""))
    for v in versions:
        if not v["labelled"]:
            scored = sum(w["scored"] for w in v["windows"])
            out.append(Text(
                f"evaluator {v['evaluator']} ({v['version']}): {scored} scored, no thumbs or "
                "ratings on them yet: nothing to compare with"))  # fmt: skip
    if not labelled:
        out.append(Text(
            "no human labels (thumbs or ratings) on any scored answer: the evaluators cannot "
            "be checked against people yet"))  # fmt: skip
    elif any(w["few_thumbs"] or w["few_ratings"] for v in labelled for w in v["windows"]):
        out.append(Text(
            f"* fewer than {MIN_LABELS} thumbs (AUC) or ratings (Spearman) in that window: too "
            "few to trust; try a longer --window"))  # fmt: skip
    out.append(Text(
        "AUC: chance a liked answer outscores a disliked one (0.5 is a coin). Spearman: rank "
        "correlation of scores with ratings."))  # fmt: skip
    return out


def _since(doc: dict[str, Any]) -> str:
    return f" since {doc['since']}" if doc.get("since") else ""


def build(
    lines: Iterable[bytes], window_s: float | None, since: datetime | None, source: str
) -> dict[str, Any]:
    """The whole report from event lines: what `--json` prints and render() draws."""
    from rollout.agreement import agreement

    evaluations, feedback = split_events(lines, since)
    rows = agreement(evaluations, feedback, window_s)
    return {
        "source": source,
        "since": None if since is None else since.isoformat(),
        "window_s": window_s,
        "min_labels": MIN_LABELS,
        "evaluators": report(rows, window_s),
    }


def register(app: typer.Typer) -> None:
    """Add the evaluators command group."""
    evaluators = typer.Typer(
        help="Online evaluators: how their scores agree with people.", no_args_is_help=True
    )
    app.add_typer(evaluators, name="evaluators")

    @evaluators.command("agreement")
    def agreement_command(
        kafka: Annotated[list[str] | None, KAFKA] = None,
        spool: Annotated[Path | None, SPOOL] = None,
        config: Annotated[Path | None, CONFIG] = None,
        since: Annotated[str | None, SINCE] = None,
        window: Annotated[str, WINDOW] = "1d",
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    ) -> None:
        """AUC for thumbs and Spearman for ratings, per evaluator, version and window."""
        from cli.events import event_source, kafka_errors, spool_errors

        window_s = parse_window(window)
        start = parse_time(since, datetime.now(UTC)) if since is not None else None
        try:
            source = event_source(kafka, spool, config)
            lines: Iterable[bytes]
            with spool_errors(), kafka_errors(), _status(as_json):
                if source.kafka is not None:
                    lines, name = _kafka_lines(source.kafka), f"Kafka {','.join(source.kafka)}"
                else:
                    assert source.spool is not None
                    lines, name = _spool_lines(source.spool), f"spool {source.spool}"
                doc = build(lines, window_s, start, name)
        except CliError as exc:
            raise fail(exc) from exc
        if as_json:
            print_json(doc)
            return
        out = console()
        for part in render(doc, out.width):
            out.print(part)


@contextlib.contextmanager
def _status(quiet: bool) -> Iterator[None]:
    """A spinner on stderr while events are read (not with --json, nor off a terminal)."""
    from cli._common import err_console

    errors = err_console()
    if quiet or not errors.is_terminal:
        yield
        return
    with errors.status("reading events…"):
        yield
