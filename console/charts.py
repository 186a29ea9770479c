"""Inline SVG charts (pure): no script, no CDN, readable at any width."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

WIDTH, HEIGHT, PAD = 640, 220, 36


def difference_chart(points: Sequence[tuple[float, float, float, float]]) -> str | None:
    """The canary-minus-control difference over time with its always-valid band.

    `points` are (time, estimate, low, high); None with fewer than two points.
    """
    if len(points) < 2:
        return None
    t0, t1 = points[0][0], points[-1][0]
    lows = [p[2] for p in points] + [0.0]
    highs = [p[3] for p in points] + [0.0]
    y0, y1 = min(lows), max(highs)
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 0.01, y1 + 0.01

    def x(t: float) -> float:
        return PAD + (WIDTH - 2 * PAD) * ((t - t0) / (t1 - t0) if t1 > t0 else 0.0)

    def y(v: float) -> float:
        return HEIGHT - PAD - (HEIGHT - 2 * PAD) * (v - y0) / (y1 - y0)

    upper = " ".join(f"{x(p[0]):.1f},{y(p[3]):.1f}" for p in points)
    lower = " ".join(f"{x(p[0]):.1f},{y(p[2]):.1f}" for p in reversed(points))
    line = " ".join(f"{x(p[0]):.1f},{y(p[1]):.1f}" for p in points)
    last = points[-1]
    label = escape(f"now {last[1]:+.3f} [{last[2]:+.3f}, {last[3]:+.3f}]")
    minutes = (t1 - t0) / 60.0
    return (
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" class="chart" '
        f'aria-label="Difference canary minus control over time: {label}">'
        f'<polygon points="{upper} {lower}" class="band"/>'
        f'<line x1="{PAD}" x2="{WIDTH - PAD}" y1="{y(0.0):.1f}" y2="{y(0.0):.1f}" class="zero"/>'
        f'<polyline points="{line}" class="estimate" fill="none"/>'
        f'<text x="{PAD}" y="{PAD - 12}">{label}</text>'
        f'<text x="{PAD}" y="{HEIGHT - 10}">{minutes:.1f} min shown</text>'
        f'<text x="4" y="{y(y1) + 4:.1f}">{y1:+.2f}</text>'
        f'<text x="4" y="{y(y0) + 4:.1f}">{y0:+.2f}</text>'
        "</svg>"
    )
