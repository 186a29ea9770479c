"""`loopgate experiments list|show`: per-variant statistics and the decision so far.

The layout follows the terminal: one wide table when it fits, variants as columns when it
does not, one small block per variant below that, so every number reads in full at 80
columns. The difference against control is shown with the always-valid confidence
sequence, the interval that agrees with the always-valid p the controller decides on; the
share's interval is a fixed-sample one and says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from cli._common import DEFAULT_URL, AsJson, Token, Url, console, print_json, reported

if TYPE_CHECKING:
    from rich.console import Group, RenderableType
    from rich.table import Table
    from rich.text import Text

Json = dict[str, Any]

DECISION_STYLE = {
    "insufficient_data": "yellow",
    "hold": "yellow",
    "advance": "green",
    "promote": "bold green",
    "rollback": "bold red",
}

# (key, header in the wide table, label in the narrow layouts)
COLUMNS = (
    ("weight", "weight", "weight"),
    ("exposures", "exposures", "exposures"),
    ("units", "units", "units"),
    ("votes", "up/down", "up / down"),
    ("share", "up share\n(95% CI)", "up share (95% CI)"),
    ("diff", "vs control\n(95% CS)", "vs control (95% CS)"),
    ("p", "p", "p"),
    ("edits", "edits", "edits"),
    ("regens", "regens", "regens"),
    ("errors", "errors", "errors"),
    ("p95", "p95", "latency p95"),
)


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def _share(iv: Json | None) -> str:
    if not iv:
        return "-"
    return f"{100 * iv['estimate']:.1f}% [{100 * iv['low']:.0f}, {100 * iv['high']:.0f}]"


def _difference(seq: Json | None) -> str:
    """The difference in percentage points with its always-valid confidence sequence."""
    if not seq:
        return "-"
    cs = seq["confidence_sequence"]
    low, high = 100 * cs["low"], 100 * cs["high"]
    return f"{100 * cs['estimate']:+.1f} pp [{low:+.1f}, {high:+.1f}]"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.0f} ms"


def variant_rows(view: Json) -> list[tuple[str, str, dict[str, str]]]:
    """Per variant: name, role (control, canary or ''), and each column's text."""
    report, metrics = view["report"], {m["name"]: m for m in view["metrics"]}
    weights = view["phases"][-1]["weights"] if view["phases"] else {}
    total_w = sum(weights.values()) or 1.0
    rows = []
    for v in report["variants"]:
        m = metrics.get(v["name"], {})
        fb = m.get("feedback", {})
        role = {report["control"]: "control", report["canary"]: "canary"}.get(v["name"], "")
        seq = v.get("sequential")
        cells = {
            "weight": _pct(weights.get(v["name"], 0.0) / total_w, 0) if weights else "-",
            "exposures": str(v["exposures"]),
            "units": "-" if v["units"] is None else str(v["units"]),
            "votes": f"{v['positive']} / {v['negative']}",
            "share": _share(v["share"]),
            "diff": _difference(seq),
            "p": f"{seq['p_value']:.3g}" if seq else "-",
            "edits": str(fb.get("edit", 0)),
            "regens": str(fb.get("regenerate", 0)),
            "errors": _pct(m.get("error_rate")),
            "p95": _ms(m.get("latency_p95")),
        }
        rows.append((v["name"], role, cells))
    return rows


def _label(name: str, role: str) -> str:
    return name if role in ("", name) else f"{name} ({role})"


def _wide(view: Json, rows: list[tuple[str, str, dict[str, str]]]) -> Table:
    from rich.table import Table

    table = Table(title=f"experiment [bold]{view['flag']}[/]", title_justify="left")
    table.add_column("variant", no_wrap=True)
    for _, header, _ in COLUMNS:
        table.add_column(header, justify="right", no_wrap=True)
    for name, role, cells in rows:
        table.add_row(_label(name, role), *(cells[key] for key, _, _ in COLUMNS))
    return table


def _by_variant(view: Json, rows: list[tuple[str, str, dict[str, str]]]) -> Table:
    """Variants as columns, numbers as rows: 80 columns hold two or three variants."""
    from rich.table import Table

    table = Table(title=f"experiment [bold]{view['flag']}[/]", title_justify="left")
    table.add_column("", style="bold", no_wrap=True)
    for name, role, _ in rows:
        table.add_column(name if not role or role == name else f"{name}\n{role}",
                         justify="right", no_wrap=True)  # fmt: skip
    for key, _, label in COLUMNS:
        table.add_row(label, *(cells[key] for _, _, cells in rows))
    return table


def _stacked(view: Json, rows: list[tuple[str, str, dict[str, str]]]) -> Group:
    """One two-column block per variant: fits any terminal."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    blocks: list[RenderableType] = [Text.from_markup(f"experiment [bold]{view['flag']}[/]")]
    for name, role, cells in rows:
        table = Table(title=_label(name, role), title_justify="left", show_header=False)
        table.add_column(style="bold")
        table.add_column()
        for key, _, label in COLUMNS:
            table.add_row(label, cells[key])
        blocks.append(table)
    return Group(*blocks)


def _fits(renderable: RenderableType, width: int) -> bool:
    from rich.console import Console
    from rich.measure import Measurement

    measuring = Console(width=width)
    # Measured without the terminal's limit, which would clamp the answer to the width.
    unbounded = measuring.options.update(max_width=100_000)
    return Measurement.get(measuring, unbounded, renderable).maximum <= width


def experiment_table(view: Json, width: int) -> RenderableType:
    """The per-variant numbers laid out for `width` columns."""
    rows = variant_rows(view)
    for layout in (_wide, _by_variant):
        table = layout(view, rows)
        if _fits(table, width):
            return table
    return _stacked(view, rows)


def bullets(items: list[str]) -> Table:
    """A bulleted list whose lines wrap under their text, not under the bullet."""
    from rich.table import Table

    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column()
    for item in items:
        grid.add_row("  •", item)
    return grid


def decision_text(view: Json) -> Text:
    """The decision so far, what the intervals are, and the sample ratio check."""
    from rich.text import Text

    report = view["report"]
    decision = report["decision"]
    text = Text()
    label = "not enough data yet" if decision == "insufficient_data" else decision
    text.append("decision: ", style="bold")
    text.append(label, style=DECISION_STYLE.get(decision, ""))
    text.append(f"   always-valid p = {report['p_value']:.3g}\n")
    srm = report["srm"]
    text.append(
        "CI: fixed-sample interval, right at a single look. CS and p: always valid, "
        "right however often you look (what the controller decides on).\n"
        f"SRM chi² {srm['statistic']:.2f} on {srm['df']} df, p = {srm['p_value']:.3g}",
        style="dim",
    )
    return text


def experiment_panel(view: Json, width: int) -> Group:
    """Table plus decision: what `experiments show` prints and the demo redraws."""
    from rich.console import Group

    reasons = view["report"]["reasons"]
    return Group(experiment_table(view, width), decision_text(view), bullets(reasons))


def shadow_panel(view: Json) -> Group | None:
    """Each judged variant pair's win rate (ties half) with its always-valid confidence
    sequence, and the plan's shadow gate; None when there are no pairs and no gate."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    shadow = view.get("shadow") or {}
    pairs, gate = shadow.get("pairs") or [], shadow.get("gate")
    if not pairs and not gate:
        return None
    parts: list[RenderableType] = []
    if pairs:
        table = Table(title="judged pairs (shadow, side by side)", title_justify="left")
        table.add_column("candidate vs baseline", no_wrap=True)
        for header in ("pairs", "won/lost/tie/bad", "win rate (95% CS)"):
            table.add_column(header, justify="right", no_wrap=True)
        for p in pairs:
            rate = p["win_rate"]
            table.add_row(
                escape(f"{p['candidate']} vs {p['baseline']}"),
                str(p["pairs"]),
                f"{p['wins']}/{p['losses']}/{p['ties']}/{p['both_bad']}",
                "-"
                if not rate
                else f"{100 * rate['estimate']:.1f}% [{100 * rate['low']:.1f}, "
                f"{100 * rate['high']:.1f}]",
            )
        parts.append(table)
    if gate:
        style = {"pass": "green", "fail": "bold red"}.get(gate["status"], "yellow")
        text = Text()
        text.append("shadow gate: ", style="bold")
        text.append(gate["status"], style=style)
        text.append(
            f"   needs {gate['min_pairs']} pairs and a lower bound >= "
            f"{100 * gate['min_win_rate']:.0f}%"
        )
        parts.extend([text, bullets([escape(r) for r in gate["reasons"]])])
    return Group(*parts)


# Evaluator scores: (key, header in the wide table, label in the narrow layouts)
SCORE_COLUMNS = (
    ("scores", "scores", "scores"),
    ("mean", "mean", "mean score"),
    ("diff", "vs control\n(95% CS)", "vs control (95% CS)"),
    ("p", "p", "p"),
    ("thumbed", "thumbed\n(up)", "thumbed (up)"),
    ("ppi", "approval\nPPI (95% CI)", "approval, PPI (95% CI)"),
    ("human", "approval\npeople only", "approval, people only"),
)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _rate(iv: Json | None) -> str:
    if not iv:
        return "-"
    return f"{100 * iv['estimate']:.1f}% [{100 * iv['low']:.0f}, {100 * iv['high']:.0f}]"


def score_rows(evaluator: Json) -> list[tuple[str, str, dict[str, str]]]:
    """Per variant of one evaluator: name, role, and each score column's text."""
    rows = []
    for r in evaluator["variants"]:
        diff = r.get("vs_control")
        cs = diff["confidence_sequence"] if diff else None
        cells = {
            "scores": str(r["scores"]),
            "mean": _num(r["mean"]),
            "diff": "-"
            if not cs
            else f"{cs['estimate']:+.3g} [{cs['low']:+.3g}, {cs['high']:+.3g}]",
            "p": f"{diff['p_value']:.3g}" if diff else "-",
            "thumbed": f"{r['labelled']} ({r['thumbs_up']})",
            "ppi": _rate(r.get("approval_ppi")),
            "human": _rate(r.get("approval_human_only")),
        }
        rows.append((r["name"], r["role"], cells))
    return rows


def _score_table(title: str, rows: list[tuple[str, str, dict[str, str]]], width: int) -> Any:
    """One evaluator's numbers laid out for `width` columns, as the variant table is."""
    from rich.console import Group
    from rich.table import Table

    wide = Table(title=title, title_justify="left")
    wide.add_column("variant", no_wrap=True)
    for _, header, _ in SCORE_COLUMNS:
        wide.add_column(header, justify="right", no_wrap=True)
    for name, role, cells in rows:
        wide.add_row(_label(name, role), *(cells[key] for key, _, _ in SCORE_COLUMNS))
    if _fits(wide, width):
        return wide
    by_variant = Table(title=title, title_justify="left")
    by_variant.add_column("", style="bold", no_wrap=True)
    for name, role, _ in rows:
        by_variant.add_column(name if role in ("", name) else f"{name}\n{role}", justify="right",
                              no_wrap=True)  # fmt: skip
    for key, _, label in SCORE_COLUMNS:
        by_variant.add_row(label, *(cells[key] for _, _, cells in rows))
    if _fits(by_variant, width):
        return by_variant
    blocks: list[Any] = []
    for name, role, cells in rows:
        block = Table(title=f"{title}: {_label(name, role)}", title_justify="left",
                      show_header=False)  # fmt: skip
        block.add_column(style="bold")
        block.add_column()
        for key, _, label in SCORE_COLUMNS:
            block.add_row(label, cells[key])
        blocks.append(block)
    return Group(*blocks)


def scores_panel(view: Json, width: int) -> Group | None:
    """Each evaluator's mean score per variant with the always-valid difference, approval by
    PPI beside people's own, and agreement with thumbs; None when nothing was scored."""
    from rich.console import Group
    from rich.markup import escape
    from rich.text import Text

    scores = view.get("scores") or []
    if not scores:
        return None
    parts: list[RenderableType] = []
    for e in scores:
        title = f"evaluator [bold]{escape(e['evaluator'])}[/] ({escape(e['version'])})"
        parts.append(_score_table(title, score_rows(e), width))
        agreement = e["agreement"]
        r = agreement["point_biserial"]
        line = (
            f"agreement with thumbs: r = {r:.2f} (point-biserial) over "
            f"{agreement['labelled']} thumbed answers"
            if r is not None
            else f"agreement with thumbs: not yet ({agreement['labelled']} thumbed answers)"
        )
        others = e.get("other_versions") or {}
        if others:
            line += "; other versions: " + ", ".join(f"{v} ({n})" for v, n in others.items())
        parts.append(Text(line, style="dim"))
    return Group(*parts)


def register(app: typer.Typer) -> None:
    """Add `loopgate experiments`."""
    group = typer.Typer(help="Experiment statistics per flag.", no_args_is_help=True)
    app.add_typer(group, name="experiments")

    @group.command("show")
    def show(
        flag: str, url: Url = DEFAULT_URL, token: Token = None, as_json: AsJson = False
    ) -> None:
        """Per variant exposures, feedback, shares, difference vs control, the decision so far.

        Role: viewer.
        """
        from cli.admin import AdminClient

        with reported():
            view = AdminClient(url, token).get(f"/admin/experiments/{flag}")
        if as_json:
            print_json(view)
            return
        out = console()
        out.print(experiment_panel(view, out.width))
        scores = scores_panel(view, out.width)
        if scores is not None:
            out.print(scores)
        shadow = shadow_panel(view)
        if shadow is not None:
            out.print(shadow)

    @group.command("list")
    def list_(url: Url = DEFAULT_URL, token: Token = None, as_json: AsJson = False) -> None:
        """Flags with counts or a rollout plan. Role: viewer."""
        from cli.admin import AdminClient

        with reported():
            doc = AdminClient(url, token).get("/admin/experiments")
        if as_json:
            print_json(doc)
            return
        from rich.table import Table

        table = Table("flag", "plan", "status", "canary share", "last decision")
        for row in doc["data"]:
            share = row["share"]
            table.add_row(
                row["flag"],
                "yes" if row["planned"] else "no",
                row["status"] or "-",
                "-" if share is None else f"{share:g}%",
                row["last_decision"] or "-",
            )
        console().print(table)
