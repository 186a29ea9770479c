"""The console's pages: sign-in, overview, flag, experiment, review, side by side, events.

Every page reads the signed-in session; every POST checks the CSRF field and the role, then
acts through the gateway's admin API with the person's own token (which checks the role
again and writes the audit event) or, for reviews, writes feedback events.
"""

from __future__ import annotations

import asyncio
import hmac
import random
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from console.admin import AdminError
from console.charts import difference_chart
from console.queues import Claim
from console.session import COOKIE, Session, csrf_ok
from console.state import ConsoleState
from console.stats import exact_moves, preview_weights, win_rates
from feedback.schema import FeedbackBody, FeedbackEvent
from router.model import parse_flag

TEMPLATES = Path(__file__).with_name("templates")
LOGIN_COOKIE = "loopgate_console_login"
ROLE_LABEL = {
    "viewer": "reads",
    "reviewer": "reads and reviews",
    "flag_editor": "changes flags and rollouts",
    "admin": "does everything",
}


class NeedSignIn(Exception):
    """No valid session: pages redirect to sign-in, changes get 401."""


class Refused(Exception):
    """The session's role, or the CSRF check, does not allow this."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _state(request: Request) -> ConsoleState:
    state: ConsoleState = request.app.state.console
    return state


StateDep = Annotated[ConsoleState, Depends(_state)]


def _session(request: Request) -> Session:
    state = _state(request)
    session = state.sessions.open(request.cookies.get(COOKIE), time.time())
    if session is None:
        raise NeedSignIn
    return session


SessionDep = Annotated[Session, Depends(_session)]


def _need(session: Session, role: str) -> None:
    if not session.allows(role):
        raise Refused(403, f"{session.name} has role {session.role}; this needs {role}")


async def _form_checked(request: Request, session: Session, role: str) -> dict[str, str]:
    """The POSTed form, after the CSRF and role checks."""
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    if not csrf_ok(session, fields.get("csrf")):
        raise Refused(403, "the form's CSRF token is missing or wrong: reload the page")
    _need(session, role)
    return fields


def _required(fields: dict[str, str], name: str) -> str:
    value = fields.get(name, "").strip()
    if not value:
        raise Refused(422, f"the form lacks {name}: reload the page")
    return value


def _number(fields: dict[str, str], name: str, kind: type[float] | type[int] = float) -> float:
    try:
        return kind(_required(fields, name))
    except ValueError:
        raise Refused(422, f"{name} must be a number") from None


def _reason(fields: dict[str, str]) -> str:
    reason = fields.get("reason", "").strip()
    if not reason:
        raise Refused(422, "say why: a change needs a reason (it goes into the audit event)")
    return reason[:1000]


def console_router(templates: Jinja2Templates, prefix: str = "/console") -> APIRouter:
    """The console's routes under `prefix`."""
    router = APIRouter(prefix=prefix, include_in_schema=False)

    def page(
        request: Request, name: str, session: Session | None, status: int = 200, **ctx: Any
    ) -> HTMLResponse:
        ctx.update(
            request=request,
            session=session,
            base=prefix,
            role_label=ROLE_LABEL,
            flash=request.query_params.get("flash"),
            error=ctx.get("error") or request.query_params.get("error"),
        )
        return templates.TemplateResponse(request, name, ctx, status_code=status)

    def back(url: str, *, flash: str | None = None, error: str | None = None) -> Response:
        query = ""
        if flash:
            query = f"?flash={quote(flash)}"
        elif error:
            query = f"?error={quote(error)}"
        return RedirectResponse(url + query, status_code=303)

    @router.get("", response_class=HTMLResponse)
    async def home(request: Request, state: StateDep) -> Response:
        """Overview when signed in, else sign-in."""
        return RedirectResponse(f"{prefix}/flags", status_code=303)

    def login_form(request: Request, status: int = 200, error: str | None = None) -> Response:
        # Login CSRF: the form's nonce must match a SameSite=Strict cookie set with it, so
        # another site cannot sign a browser in with the attacker's token.
        nonce = secrets.token_urlsafe(16)
        answer = page(request, "login.html", None, status=status, error=error, nonce=nonce)
        answer.set_cookie(
            LOGIN_COOKIE, nonce, max_age=3600, path=prefix, httponly=True, samesite="strict",
            secure=request.url.scheme == "https",
        )  # fmt: skip
        return answer

    @router.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request) -> Response:
        """The sign-in form."""
        return login_form(request)

    @router.post("/login")
    async def login(
        request: Request,
        state: StateDep,
        token: Annotated[str, Form(max_length=512)] = "",
        nonce: Annotated[str, Form(max_length=64)] = "",
    ) -> Response:
        """Check the token with the gateway, then set the session cookie."""
        expected = request.cookies.get(LOGIN_COOKIE, "")
        if not nonce or not hmac.compare_digest(nonce.encode(), expected.encode()):
            return login_form(request, 403, "the sign-in form expired: sign in again")
        token = token.strip()
        try:
            who = await state.admin.whoami(token) if token else None
        except AdminError as exc:
            return login_form(request, 401, exc.message)
        if who is None:
            return login_form(request, 401, "paste an admin token")
        _, cookie = state.sessions.new(who["name"], who["role"], token, time.time())
        answer = RedirectResponse(f"{prefix}/flags", status_code=303)
        answer.set_cookie(
            COOKIE,
            cookie,
            max_age=int(state.sessions.ttl_s),
            path=prefix,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        answer.delete_cookie(LOGIN_COOKIE, path=prefix)
        return answer

    @router.post("/logout")
    async def logout(request: Request, session: SessionDep) -> Response:
        """Forget the session cookie."""
        await _form_checked(request, session, "viewer")
        answer = RedirectResponse(f"{prefix}/login", status_code=303)
        answer.delete_cookie(COOKIE, path=prefix)
        return answer

    # Flags and experiments -------------------------------------------------------------
    @router.get("/flags", response_class=HTMLResponse)
    async def overview(request: Request, state: StateDep, session: SessionDep) -> Response:
        """Every flag: split, exposures per minute, feedback shares, rollout state, alerts."""
        listing = await state.admin.flags(session.token)
        rows = []
        for flag in listing["data"]:
            experiment = await state.admin.experiment(session.token, flag["key"])
            if experiment is not None:
                state.sample(flag["key"], experiment)
            rows.append(_overview_row(state, flag, experiment, listing["staleness_seconds"]))
        template = "overview_rows.html" if request.headers.get("hx-request") else "overview.html"
        return page(request, template, session, rows=rows, listing=listing)

    @router.get("/flags/{key:path}/preview", response_class=HTMLResponse)
    async def preview(request: Request, key: str, state: StateDep, session: SessionDep) -> Response:
        """How many units a weight change moves, and where (an htmx fragment)."""
        flag = parse_flag(_without_object(await state.admin.flag(session.token, key)))
        weights: dict[str, float] = {}
        for v in flag.variants:
            raw = request.query_params.get(f"weight_{v.name}", "")
            try:
                weights[v.name] = float(raw) if raw != "" else v.weight
            except ValueError:
                return HTMLResponse(f"<p class=error>weight of {v.name} is not a number</p>")
        if all(w <= 0 for w in weights.values()):
            return HTMLResponse("<p class=error>at least one weight must be above 0</p>")
        moves = exact_moves(flag, weights)
        exact = moves is not None
        if moves is None:
            # CPU work: off the event loop that serves the gateway's requests.
            moves = await asyncio.to_thread(preview_weights, flag, weights)
        return page(request, "preview.html", session, moves=moves, exact=exact)

    @router.post("/flags/{key:path}/weights")
    async def set_weights(
        request: Request, key: str, state: StateDep, session: SessionDep
    ) -> Response:
        """Re-weight through the admin API, against the version the page showed."""
        fields = await _form_checked(request, session, "flag_editor")
        reason = _reason(fields)
        weights = {
            name[len("weight_") :]: _number(fields, name)
            for name, value in fields.items()
            if name.startswith("weight_") and value.strip()
        }
        if not weights:
            raise Refused(422, "no weights in the form")
        body = {
            "weights": weights,
            "expected_version": int(_number(fields, "expected_version", int)),
        }
        return await _change(state, session, key, "weights", body, reason, back)

    @router.post("/flags/{key:path}/kill")
    async def kill(request: Request, key: str, state: StateDep, session: SessionDep) -> Response:
        """Pull the kill switch (everyone to control), once confirmed."""
        fields = await _form_checked(request, session, "flag_editor")
        reason = _reason(fields)
        if fields.get("confirm") != key:
            raise Refused(422, f"type the flag key ({key}) to confirm the kill switch")
        body = {"expected_version": int(_number(fields, "expected_version", int))}
        return await _change(state, session, key, "kill", body, reason, back)

    @router.post("/flags/{key:path}/unkill")
    async def unkill(request: Request, key: str, state: StateDep, session: SessionDep) -> Response:
        """Lift the kill switch."""
        fields = await _form_checked(request, session, "flag_editor")
        body = {"expected_version": int(_number(fields, "expected_version", int))}
        return await _change(state, session, key, "unkill", body, _reason(fields), back)

    @router.post("/flags/{key:path}/shadow")
    async def set_shadow(
        request: Request, key: str, state: StateDep, session: SessionDep
    ) -> Response:
        """Set, change or remove the flag's shadow: the flag PUT back through the admin API."""
        fields = await _form_checked(request, session, "flag_editor")
        reason = _reason(fields)
        url = f"{prefix}/flags/{key}"
        expected = int(_number(fields, "expected_version", int))
        try:
            shadow = None if fields.get("action") == "remove" else _shadow_fields(fields)
        except ValueError as exc:
            return back(url, error=f"shadow not saved: {exc}")
        flag = await state.admin.flag(session.token, key)
        if flag["version"] != expected:
            return back(
                url, error=_stale(f"the flag is at v{flag['version']}, the page at v{expected}")
            )
        body = {**_without_object(flag), "shadow": shadow, "version": expected}
        try:
            await state.admin.update_flag(session.token, key, body, reason)
        except AdminError as exc:
            if exc.status == 409:
                return back(url, error=_stale(exc.message))
            return back(url, error=f"shadow not saved: {exc.status}: {exc.message}")
        return back(url, flash="shadow: removed" if shadow is None else "shadow: saved")

    @router.post("/experiments/{key:path}/rollout/{action}")
    async def rollout_action(
        request: Request, key: str, action: str, state: StateDep, session: SessionDep
    ) -> Response:
        """Pause, resume or abort the rollout on a flag."""
        fields = await _form_checked(request, session, "flag_editor")
        if action not in ("pause", "resume", "abort"):
            raise Refused(404, f"no rollout action {action!r}")
        reason = _reason(fields)
        url = f"{prefix}/experiments/{key}"
        try:
            await state.admin.call(
                session.token,
                "POST",
                f"/admin/experiments/{quote(key)}/rollout/{action}",
                reason=reason,
            )
        except AdminError as exc:
            return back(url, error=f"{exc.status}: {exc.message}")
        return back(url, flash=f"rollout {action}: done")

    @router.get("/flags/{key:path}", response_class=HTMLResponse)
    async def flag_page(
        request: Request, key: str, state: StateDep, session: SessionDep
    ) -> Response:
        """Variants, weights, rules, kill switch and the audit history."""
        flag = await state.admin.flag(session.token, key)
        history = state.feed.audit_for(key) if state.feed else None
        return page(request, "flag.html", session, flag=flag, history=history)

    @router.get("/experiments/{key:path}", response_class=HTMLResponse)
    async def experiment_page(
        request: Request, key: str, state: StateDep, session: SessionDep
    ) -> Response:
        """Per-variant statistics, SRM, guardrails, the ladder and the controller's history."""
        experiment = await state.admin.experiment(session.token, key)
        rollout = await state.admin.rollout(session.token, key)
        chart = None
        if experiment is not None:
            state.sample(key, experiment)
            chart = difference_chart(list(state.series.get(key, ())))
        live = request.headers.get("hx-request")  # the page's poll: just the numbers
        return page(
            request,
            "experiment_live.html" if live else "experiment.html",
            session,
            key=key,
            experiment=experiment,
            rollout=rollout,
            chart=chart,
        )

    # Review --------------------------------------------------------------------------
    @router.get("/review", response_class=HTMLResponse)
    async def queues_page(request: Request, state: StateDep, session: SessionDep) -> Response:
        """Each queue: waiting, claimed, labelled, and the reviewers' agreement."""
        _need(session, "reviewer")
        now = time.time()
        stats = [(q, await state.queues.stats(q.name, now)) for q in state.config.queues]
        return page(request, "queues.html", session, stats=stats)

    @router.get("/review/{queue}", response_class=HTMLResponse)
    async def review_page(
        request: Request, queue: str, state: StateDep, session: SessionDep
    ) -> Response:
        """The next item of the queue for this reviewer, one at a time."""
        _need(session, "reviewer")
        config = next((q for q in state.config.queues if q.name == queue), None)
        if config is None:
            raise Refused(404, f"no review queue {queue!r}")
        claim = await state.queues.claim(queue, session.name, time.time())
        return page(
            request,
            "review.html",
            session,
            queue=config,
            claim=claim,
            taxonomy=state.config.taxonomy,
            shown_at=int(time.time() * 1000),
        )

    @router.post("/review/{queue}")
    async def label(request: Request, queue: str, state: StateDep, session: SessionDep) -> Response:
        """Record a label as feedback events (source reviewer), or skip; then the next item."""
        fields = await _form_checked(request, session, "reviewer")
        claim = Claim(fields.get("entry_id", ""), _item_fields(fields))
        url = f"{prefix}/review/{queue}"
        if fields.get("action") == "skip":
            await state.queues.ack(queue, claim, session.name, None, time.time())
            return back(url, flash="skipped")
        events = _label_events(state, session, queue, fields)
        if not events:
            return back(url, error="choose good or bad, a rating, a category or a correction")
        if state.emit is None:
            return back(url, error="events are disabled here: labels cannot be recorded")
        for event in events:
            state.emit(event)
        label_value = fields.get("verdict") or fields.get("rating") or fields.get("category")
        await state.queues.ack(queue, claim, session.name, label_value or "labelled", time.time())
        return back(url, flash="saved")

    @router.get("/compare", response_class=HTMLResponse)
    async def compare_page(request: Request, state: StateDep, session: SessionDep) -> Response:
        """Two variants' answers to one prompt, blind, in random order; win rates so far."""
        _need(session, "reviewer")
        pair = None
        if state.feed is not None:
            for candidate in reversed(state.feed.pairs.values()):
                if (session.name, candidate.pair_id) not in state.judged:
                    pair = candidate
                    break
        shown = None
        if pair is not None:
            a, b = (pair.first, pair.second)
            if random.random() < 0.5:
                a, b = b, a
            shown = {"pair": pair, "a": a, "b": b}
        return page(
            request,
            "compare.html",
            session,
            shown=shown,
            rates=win_rates(state.choices),
            shown_at=int(time.time() * 1000),
        )

    @router.post("/compare")
    async def compare(request: Request, state: StateDep, session: SessionDep) -> Response:
        """A, B, tie or both bad -> a `preference` feedback, recorded by the gateway."""
        fields = await _form_checked(request, session, "reviewer")
        winner = fields.get("winner", "")
        if winner not in ("a", "b", "tie", "both_bad"):
            raise Refused(422, "winner must be a, b, tie or both_bad")
        url = f"{prefix}/compare"
        wire: dict[str, Any] = {
            "response_id": _required(fields, "response_a"),
            "other_response_id": _required(fields, "response_b"),
            "kind": "preference",
            "winner": winner,
            "source": "reviewer",
            "reviewer": session.name,
            "queue": "side_by_side",
            "time_spent_ms": _spent(fields),
        }
        try:
            recorded = await state.admin.record_feedback(session.token, wire)
        except AdminError as exc:
            return back(
                url, error=f"not recorded: the gateway answered {exc.status}: {exc.message}"
            )
        flash = "preference saved"
        if recorded is None:
            # An older gateway: record it ourselves, as before (the counters miss it).
            if state.emit is None:
                return back(url, error="events are disabled here: preferences cannot be recorded")
            body = FeedbackBody(
                **wire,
                flag=fields.get("flag") or None,
                variant=fields.get("variant_a") or None,
                other_variant=fields.get("variant_b") or None,
                app="console",
            )
            state.emit(FeedbackEvent.create(body, gateway=state.instance, now=time.time()))
            flash = (
                "preference saved by the console's own events: this gateway has no "
                "/admin/feedback, so the rollout's counters do not see it"
            )
        state.choices.append((fields.get("variant_a", "?"), fields.get("variant_b", "?"), winner))
        state.mark_judged(session.name, fields.get("pair_id", ""))
        return back(url, flash=flash)

    @router.get("/events", response_class=HTMLResponse)
    async def events_page(
        request: Request,
        state: StateDep,
        session: SessionDep,
        flag: str = "",
        variant: str = "",
        type: str = "",
    ) -> Response:
        """Recent completions and feedback, redacted, filtered by flag, variant and type."""
        events = list(state.feed.events(flag, variant, type, 100)) if state.feed else None
        return page(
            request,
            "events.html",
            session,
            events=events,
            filters={"flag": flag, "variant": variant, "type": type},
        )

    return router


async def _change(
    state: ConsoleState,
    session: Session,
    key: str,
    what: str,
    body: dict[str, Any],
    reason: str,
    back: Callable[..., Response],
) -> Response:
    url = f"{state_prefix(state)}/flags/{key}"
    try:
        await state.admin.call(
            session.token, "POST", f"/admin/flags/{quote(key)}/{what}", body, reason=reason
        )
    except AdminError as exc:
        if exc.status == 409:
            return back(url, error=_stale(exc.message))
        return back(url, error=f"{exc.status}: {exc.message}")
    return back(url, flash=f"{what}: saved")


def _stale(detail: str) -> str:
    return (
        f"409 conflict: someone changed this flag since you loaded the page ({detail}). "
        "Nothing was changed: review the new values and retry."
    )


def _shadow_fields(fields: dict[str, str]) -> dict[str, Any]:
    """The shadow the form describes (the admin API validates ranges; ValueError: not numbers)."""
    variant = fields.get("shadow_variant", "").strip()
    if not variant:
        raise ValueError("choose the variant that shadows the flag")
    numbers: dict[str, Any] = {}
    for name, kind in (("share", float), ("max_in_flight", int), ("timeout_s", float),
                       ("tokens_per_minute", int)):  # fmt: skip
        raw = fields.get(f"shadow_{name}", "").strip()
        if raw:
            try:
                numbers[name] = kind(raw)
            except ValueError:
                raise ValueError(f"{name} must be a number, not {raw!r}") from None
    if "share" not in numbers:
        raise ValueError("give the share of units the shadow mirrors")
    numbers.setdefault("tokens_per_minute", None)
    return {"variant": variant, "stream": fields.get("shadow_stream") == "on", **numbers}


def state_prefix(state: ConsoleState) -> str:
    """Where the console is mounted."""
    return state.prefix


def _without_object(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "object"}


def _overview_row(
    state: ConsoleState,
    flag: dict[str, Any],
    experiment: dict[str, Any] | None,
    stale: float | None,
) -> dict[str, Any]:
    total = sum(float(v["weight"]) for v in flag["variants"]) or 1.0
    split = [
        {"name": v["name"], "share": 0.0 if flag.get("killed") and v["name"] != flag["control"]
         else (100.0 if flag.get("killed") else 100.0 * float(v["weight"]) / total)}
        for v in flag["variants"]
    ]  # fmt: skip
    alerts: list[str] = []
    feedback: list[dict[str, Any]] = []
    rollout = None
    if experiment is not None:
        report = experiment["report"]
        srm = report.get("srm_current_phase") or report.get("srm") or {}
        if srm.get("df", 0) and srm.get("p_value", 1.0) < 0.001:
            alerts.append(f"sample ratio mismatch (p={srm['p_value']:.1g})")
        for g in report.get("guardrails", []):
            if g.get("status") == "breach":
                alerts.append(f"guardrail breached: {g['name']}")
        for v in report["variants"]:
            share = v.get("share")  # an interval {estimate, low, high} once there is feedback
            feedback.append(
                {
                    "name": v["name"],
                    "share": share.get("estimate") if isinstance(share, dict) else share,
                    "n": v["positive"] + v["negative"],
                }
            )
        rollout = (experiment.get("state") or {}).get("status")
    if flag.get("killed"):
        alerts.append("kill switch on")
    if stale is not None and stale > 60:
        alerts.append(f"flag store stale ({stale:.0f} s)")
    return {
        "flag": flag,
        "split": split,
        "per_minute": state.exposures_per_minute(flag["key"]),
        "exposures": (
            sum(int(v.get("exposures") or 0) for v in experiment["report"]["variants"])
            if experiment is not None
            else None
        ),
        "feedback": feedback,
        "rollout": rollout,
        "planned": bool(experiment and experiment.get("planned")),
        "alerts": alerts,
    }


def _item_fields(fields: dict[str, str]) -> dict[str, Any]:
    return {
        "item_id": fields.get("item_id", ""),
        "response_id": fields.get("response_id", ""),
        "flag": fields.get("flag") or None,
        "variant": fields.get("variant") or None,
    }


def _spent(fields: dict[str, str]) -> int | None:
    try:
        return max(0, int(time.time() * 1000) - int(fields.get("shown_at", "")))
    except ValueError:
        return None


def _label_events(
    state: ConsoleState, session: Session, queue: str, fields: dict[str, str]
) -> list[FeedbackEvent]:
    """The feedback events a label form makes: the verdict (or rating, or comment), an edit."""
    common: dict[str, Any] = {
        "response_id": _required(fields, "response_id"),
        "flag": fields.get("flag") or None,
        "variant": fields.get("variant") or None,
        "app": "console",
        "source": "reviewer",
        "reviewer": session.name,
        "queue": queue,
        "time_spent_ms": _spent(fields),
        "category": fields.get("category") or None,
        "comment": fields.get("comment", "").strip() or None,
    }
    rating = fields.get("rating", "")
    if rating and rating not in ("1", "2", "3", "4", "5"):
        raise Refused(422, "rating is 1 to 5")
    if common["category"] and common["category"] not in state.config.taxonomy:
        raise Refused(422, f"category must be one of {', '.join(state.config.taxonomy)}")
    verdict = fields.get("verdict", "")
    bodies: list[FeedbackBody] = []
    if verdict in ("good", "bad"):
        kind = "thumbs_up" if verdict == "good" else "thumbs_down"
        value = float(rating) if rating else None
        bodies.append(FeedbackBody(kind=kind, value=value, **common))
    elif rating:
        bodies.append(FeedbackBody(kind="rating", value=float(rating), **common))
    elif common["comment"] or common["category"]:
        bodies.append(FeedbackBody(kind="comment", **common))
    correction = fields.get("correction", "").strip()
    if correction:
        bodies.append(FeedbackBody(kind="edit", edited_text=correction, **common))
    now = time.time()
    return [FeedbackEvent.create(b, gateway=state.instance, now=now) for b in bodies]
