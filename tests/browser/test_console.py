"""The console in a real browser: Playwright drives Debian's Chromium against a real gateway.

One gateway (console embedded, events to a spool, a writable flag file, the rollout
controller in process) in front of two `loopgate sim` versions serves every scenario. The
screenshots of every page at 1280 and 375 px land in the pytest temp folder
(`screenshots/`), or in $LOOPGATE_CONSOLE_SCREENSHOTS.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from feedback.sinks.spool import SEGMENT_SUFFIX
from tests.support.events import spooled_events
from tests.support.gateway import GatewayServer, pool, start_gateway
from tests.support.ports import free_port, wait_until
from tests.support.sim import SimServer, start_sim

playwright = pytest.importorskip("playwright.sync_api")
expect = playwright.expect

CHROMIUM = "/usr/bin/chromium"
TOKENS = {
    "viewer": "console-viewer-token",
    "reviewer": "console-reviewer-token",
    "flag_editor": "console-editor-token",
    "admin": "console-admin-token",
}
NAMES = {"viewer": "vera", "reviewer": "rui", "flag_editor": "edda", "admin": "ada"}
WIDTHS = (1280, 375)

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason="needs Debian's chromium (apt-get install chromium)"
)


def _flags_file(folder: Path) -> Path:
    path = folder / "flags.yaml"
    variants = [
        {"name": "control", "pool": "policy-a", "served_model": "policy-a", "weight": 100},
        {"name": "canary", "pool": "policy-b", "served_model": "policy-b", "weight": 0},
    ]
    path.write_text(
        yaml.safe_dump(
            {
                "flags": {
                    "support-bot": {"control": "control", "variants": variants},
                    "rollout-bot": {"control": "control", "variants": variants},
                }
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two sims and a gateway with the console; stopped at the end of the module."""
    folder = tmp_path_factory.mktemp("console")
    sims: list[SimServer] = [
        start_sim(folder, model="policy-a", seed=1, style="concise"),
        start_sim(folder, model="policy-b", seed=2, style="friendly"),
    ]
    config = {
        "instance": "console-test",
        "pools": {
            "policy-a": pool(sims[0].base_url, served_model="policy-a"),
            "policy-b": pool(sims[1].base_url, served_model="policy-b"),
        },
        "flags": {"source": "file", "path": str(_flags_file(folder)), "reload_interval": 0.2},
        "ids": {"keys": ["console-test-key-" + "k" * 32]},
        "auth": {
            "admin_tokens": [
                {"hash": hashlib.sha256(t.encode()).hexdigest(), "role": r, "name": NAMES[r]}
                for r, t in TOKENS.items()
            ]
        },
        "events": {"spool": {"dir": str(folder / "spool")}, "linger_s": 0.0},
        "experiments": {"controller": {"in_process": True, "interval_s": 0.5}},
        "console": {
            "queues": [
                {"name": "audit", "signals": ["audit_sample"], "sample_rate": 1.0, "overlap": 2},
                {"name": "reports", "signals": ["report", "safety"]},
            ],
            "sample_seed": 7,
        },
    }
    gateway = start_gateway(config, folder)
    try:
        # LOOPGATE_CONSOLE_SCREENSHOTS keeps them somewhere pytest's temp rotation won't reach.
        shots = Path(os.environ.get("LOOPGATE_CONSOLE_SCREENSHOTS") or folder / "screenshots")
        yield {"gateway": gateway, "spool": folder / "spool", "shots": shots}
    finally:
        gateway.stop()
        for sim in sims:
            sim.stop()


@pytest.fixture(scope="module")
def browser(stack: dict[str, Any]) -> Iterator[Any]:
    """Chromium, headless, from Debian (no Playwright browser download)."""
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def signed_in(browser: Any, stack: dict[str, Any]) -> Iterator[Callable[..., Any]]:
    """sign_in(role, width) -> a page signed in as that role; contexts closed at teardown."""
    contexts: list[Any] = []

    def sign_in(role: str, width: int = 1280) -> Any:
        context = browser.new_context(viewport={"width": width, "height": 900})
        contexts.append(context)
        page = context.new_page()
        page.goto(stack["gateway"].base_url + "/console")
        assert page.url.endswith("/console/login")
        page.get_by_label("Admin token").fill(TOKENS[role])
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("**/console/flags")
        return page

    yield sign_in
    for context in contexts:
        context.close()


def _shot(stack: dict[str, Any], page: Any, name: str) -> None:
    folder: Path = stack["shots"]
    folder.mkdir(parents=True, exist_ok=True)
    width = page.viewport_size["width"]
    page.screenshot(path=str(folder / f"{name}-{width}.png"), full_page=True)


def _chat(gateway: GatewayServer, user: str, text: str = "How do I reset my password?") -> str:
    body = json.dumps(
        {"model": "support-bot", "user": user, "messages": [{"role": "user", "content": text}]}
    ).encode()
    request = urllib.request.Request(
        gateway.base_url + "/v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return str(answer.headers["X-Loopgate-Variant"])


def _post(gateway: GatewayServer, path: str, body: Any) -> Any:
    request = urllib.request.Request(
        gateway.base_url + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def _chat_answer(gateway: GatewayServer, user: str, text: str) -> Any:
    body = {"model": "support-bot", "user": user, "messages": [{"role": "user", "content": text}]}
    return _post(gateway, "/v1/chat/completions", body)


def _admin(gateway: GatewayServer, method: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        gateway.base_url + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {TOKENS['admin']}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        raw = answer.read()
    return json.loads(raw) if raw else None


def _events(spool: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(spool.rglob(f"*{SEGMENT_SUFFIX}")):
        out.extend(json.loads(line) for line in path.read_bytes().splitlines() if line.strip())
    return out


def _wait_events(spool: Path, match: Callable[[dict[str, Any]], bool], count: int = 1) -> list[Any]:
    found: list[dict[str, Any]] = []

    def enough() -> bool:
        found[:] = [e for e in _events(spool) if match(e)]
        return len(found) >= count

    wait_until(enough, 15, "events in the spool")
    return found


def _weights(gateway: GatewayServer, key: str) -> dict[str, float]:
    flag = _admin(gateway, "GET", f"/admin/flags/{key}")
    return {v["name"]: v["weight"] for v in flag["variants"]}


@pytest.mark.parametrize("role", list(TOKENS))
def test_sign_in_as_each_role_shows_what_the_role_may_do(
    signed_in: Callable[..., Any], stack: dict[str, Any], role: str
) -> None:
    for width in WIDTHS:
        page = signed_in(role, width)
        assert NAMES[role] in page.locator("header").inner_text()
        nav = page.get_by_role("navigation", name="Main")
        reviews = role in ("reviewer", "flag_editor", "admin")
        assert (nav.get_by_role("link", name="Review").count() == 1) == reviews
        page.goto(stack["gateway"].base_url + "/console/flags/support-bot")
        editor = role in ("flag_editor", "admin")
        assert (page.get_by_role("button", name="Save weights").count() == 1) == editor
        assert (page.get_by_role("button", name="Kill").count() == 1) == editor
        assert (page.get_by_role("button", name="Save shadow").count() == 1) == editor
        _shot(stack, page, f"flag-as-{role}")
        if not reviews:
            page.goto(stack["gateway"].base_url + "/console/review")
            assert "this needs reviewer" in page.locator("main").inner_text()


def test_session_cookie_is_httponly_strict_and_logout_ends_it(
    signed_in: Callable[..., Any], stack: dict[str, Any]
) -> None:
    page = signed_in("viewer")
    (cookie,) = page.context.cookies()
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/console")
    assert cookie["expires"] > time.time() + 3600
    assert TOKENS["viewer"] not in cookie["value"]  # sealed, not merely signed
    # The overview polls its rows (htmx, every 5 s) and swaps them in place.
    with page.expect_response(
        lambda r: r.url.endswith("/console/flags") and r.request.headers.get("hx-request"),
        timeout=10_000,
    ) as polled:
        pass
    assert polled.value.status == 200
    assert "<html" not in polled.value.text()  # just the rows
    expect(page.locator("#flag-rows tr")).to_have_count(2)
    _shot(stack, page, "overview")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/console/login")
    _shot(stack, page, "login")
    page.goto(stack["gateway"].base_url + "/console/flags")
    assert page.url.endswith("/console/login")


def test_wrong_token_is_refused_at_sign_in(browser: Any, stack: dict[str, Any]) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(stack["gateway"].base_url + "/console/login")
        page.get_by_label("Admin token").fill("not-a-token")
        page.get_by_role("button", name="Sign in").click()
        assert "admin token is required" in page.get_by_role("alert").inner_text()
        assert "loopgate_console" not in {c["name"] for c in context.cookies()}
        # Login CSRF: a sign-in posted without the form's nonce (from another site) is refused.
        answer = context.request.post(
            stack["gateway"].base_url + "/console/login", form={"token": TOKENS["admin"]}
        )
        assert answer.status == 403
        assert "loopgate_console" not in {c["name"] for c in context.cookies()}
    finally:
        context.close()


def test_weight_change_previews_moves_and_the_gateway_routes_differently(
    signed_in: Callable[..., Any], stack: dict[str, Any]
) -> None:
    gateway = stack["gateway"]
    users = [f"weight-user-{i}" for i in range(12)]
    assert {_chat(gateway, u) for u in users} == {"control"}
    page = signed_in("flag_editor")
    page.goto(gateway.base_url + "/console/flags/support-bot")
    page.get_by_label("Weight of canary").fill("100")
    page.get_by_label("Weight of control").fill("0")
    preview = page.locator("#preview")
    preview.get_by_text("100.0% from control to canary").wait_for()
    _shot(stack, page, "flag-preview")
    page.get_by_label("Reason for the change").fill("canary looks good in QA")
    page.get_by_role("button", name="Save weights").click()
    assert "weights: saved" in page.get_by_role("status").inner_text()
    assert _weights(gateway, "support-bot") == {"control": 0.0, "canary": 100.0}
    assert {_chat(gateway, u) for u in users} == {"canary"}
    change = _wait_events(
        stack["spool"],
        lambda e: (
            e["type"] == "flag_change" and e["body"].get("reason") == "canary looks good in QA"
        ),
    )[0]["body"]
    assert (change["who"], change["action"], change["what"]) == (
        "edda",
        "set_weights",
        "support-bot",
    )
    # The audit history on the page shows who, why, before and after.
    page.reload()
    history = page.get_by_role("region", name="Audit history").inner_text()
    assert "edda" in history
    assert "canary looks good in QA" in history
    # Back to 50/50 for the side-by-side scenario.
    page.get_by_label("Weight of canary").fill("50")
    page.get_by_label("Weight of control").fill("50")
    page.get_by_label("Reason for the change").fill("half and half")
    page.get_by_role("button", name="Save weights").click()
    assert _weights(gateway, "support-bot") == {"control": 50.0, "canary": 50.0}


def test_stale_write_shows_the_409_and_changes_nothing(
    signed_in: Callable[..., Any], stack: dict[str, Any]
) -> None:
    gateway = stack["gateway"]
    page = signed_in("flag_editor")
    page.goto(gateway.base_url + "/console/flags/rollout-bot")
    # Someone else changes the flag after the page loaded.
    _admin(gateway, "POST", "/admin/flags/rollout-bot/weights", {"weights": {"control": 100}})
    before = _admin(gateway, "GET", "/admin/flags/rollout-bot")
    page.get_by_label("Weight of canary").fill("30")
    page.get_by_label("Reason for the change").fill("try 30")
    page.get_by_role("button", name="Save weights").click()
    alert = page.get_by_role("alert").inner_text()
    assert "409 conflict" in alert
    assert "Nothing was changed" in alert
    _shot(stack, page, "flag-409")
    assert _admin(gateway, "GET", "/admin/flags/rollout-bot") == before


def test_kill_asks_for_confirmation_then_unkill(
    signed_in: Callable[..., Any], stack: dict[str, Any]
) -> None:
    gateway = stack["gateway"]
    _admin(
        gateway,
        "POST",
        "/admin/flags/support-bot/weights",
        {"weights": {"control": 0, "canary": 100}},
    )
    users = [f"kill-user-{i}" for i in range(6)]
    assert {_chat(gateway, u) for u in users} == {"canary"}
    page = signed_in("admin")
    page.goto(gateway.base_url + "/console/flags/support-bot")
    page.get_by_label("Reason", exact=True).fill("bad answers reported")
    page.get_by_label("Type support-bot to confirm").fill("support-bot")
    dialogs: list[str] = []

    def dismiss(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", dismiss)
    page.get_by_role("button", name="Kill").click()
    assert dialogs
    assert "Send all traffic of support-bot to control" in dialogs[0]
    assert not _admin(gateway, "GET", "/admin/flags/support-bot")["killed"]
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Kill").click()
    assert "kill: saved" in page.get_by_role("status").inner_text()
    assert _admin(gateway, "GET", "/admin/flags/support-bot")["killed"]
    assert {_chat(gateway, u) for u in users} == {"control"}
    _shot(stack, page, "flag-killed")
    page.get_by_label("Reason", exact=True).fill("fixed upstream")
    page.get_by_role("button", name="Lift the kill switch").click()
    assert "unkill: saved" in page.get_by_role("status").inner_text()
    assert {_chat(gateway, u) for u in users} == {"canary"}
    _admin(
        gateway,
        "POST",
        "/admin/flags/support-bot/weights",
        {"weights": {"control": 50, "canary": 50}},
    )


def test_abort_a_rollout(signed_in: Callable[..., Any], stack: dict[str, Any]) -> None:
    gateway = stack["gateway"]
    plan = {"control": "control", "canary": "canary", "steps": [20, 100], "min_duration_s": 3600}
    _admin(gateway, "PUT", "/admin/experiments/rollout-bot/rollout", plan)

    def started() -> bool:
        state = _admin(gateway, "GET", "/admin/experiments/rollout-bot/rollout")["state"]
        return bool(state) and state["status"] == "running" and state["share"] == 20

    wait_until(started, 15, "the controller's first step")
    page = signed_in("flag_editor")
    page.goto(gateway.base_url + "/console/experiments/rollout-bot")
    assert page.locator("#rollout-status").inner_text() == "running"
    _shot(stack, page, "experiment")
    page.get_by_label("Reason").fill("pause while we look")
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("#rollout-status")).to_have_text("paused")
    # The reason reaches the controller's history through the admin API (X-Loopgate-Reason).
    assert (
        "hold by edda: pause while we look"
        in page.get_by_role("region", name="Rollout").inner_text()
    )
    page.get_by_label("Reason").fill("looked: go on")
    page.get_by_role("button", name="Resume").click()
    expect(page.locator("#rollout-status")).to_have_text("running")
    page.get_by_label("Reason").fill("canary breaks billing questions")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Abort").click()
    expect(page.locator("#rollout-status")).to_have_text("rolled_back")
    assert _weights(gateway, "rollout-bot")["canary"] == 0.0
    history = page.get_by_role("region", name="Rollout").inner_text()
    assert "rollback by edda: canary breaks billing questions" in history
    # Abort changes the flag's weights, so it lands as an audit event with its reason.
    change = _wait_events(
        stack["spool"],
        lambda e: (
            e["type"] == "flag_change"
            and e["body"].get("reason") == "canary breaks billing questions"
        ),
    )[0]["body"]
    assert (change["who"], change["what"]) == ("edda", "rollout-bot")
    _shot(stack, page, "experiment-aborted")


def test_label_queue_items_become_reviewer_feedback_with_agreement(
    signed_in: Callable[..., Any], stack: dict[str, Any]
) -> None:
    gateway = stack["gateway"]
    _chat(gateway, "queue-user-1", "Where is my parcel? Mail me at jo@example.com")
    reviewer = signed_in("reviewer")
    reviewer.goto(gateway.base_url + "/console/review")
    _shot(stack, reviewer, "queues")
    reviewer.get_by_role("link", name="audit").click()
    prompt = reviewer.locator("#prompt").inner_text()
    assert prompt.startswith("user: ")
    assert "jo@example.com" not in reviewer.locator("main").inner_text()  # redacted
    response_id = reviewer.locator("input[name=response_id]").input_value()
    _shot(stack, reviewer, "review")
    reviewer.keyboard.press("b")  # bad
    reviewer.keyboard.press("4")  # rating 4
    reviewer.get_by_label("Category").select_option("wrong")
    reviewer.get_by_label("Corrected answer").fill("Your parcel arrives on Monday.")
    reviewer.keyboard.press("Control+Enter")
    assert "saved" in reviewer.get_by_role("status").inner_text()
    # The same item goes to a second reviewer (overlap 2), never back to the first.
    assert reviewer.locator("input[name=response_id]").count() == 0 or (
        reviewer.locator("input[name=response_id]").input_value() != response_id
    )
    second = signed_in("admin", 375)
    second.goto(gateway.base_url + "/console/review/audit")
    while second.locator("input[name=response_id]").input_value() != response_id:
        second.keyboard.press("s")  # skip earlier items
        second.wait_for_load_state()
    _shot(stack, second, "review")
    second.keyboard.press("b")
    second.get_by_role("button", name="Save").click()
    assert "saved" in second.get_by_role("status").inner_text()

    labels = _wait_events(
        stack["spool"],
        lambda e: e["type"] == "feedback" and e["body"]["response_id"] == response_id,
        count=3,
    )
    by_kind = {(e["body"]["reviewer"], e["body"]["kind"]): e["body"] for e in labels}
    bad = by_kind[("rui", "thumbs_down")]
    assert (bad["source"], bad["queue"], bad["value"], bad["category"]) == (
        "reviewer", "audit", 4.0, "wrong"
    )  # fmt: skip
    assert bad["time_spent_ms"] >= 0
    assert bad["variant"] in ("control", "canary")
    edit = by_kind[("rui", "edit")]
    assert edit["edited_text"] == "Your parcel arrives on Monday."
    assert by_kind[("ada", "thumbs_down")]["source"] == "reviewer"
    second.goto(gateway.base_url + "/console/review")
    row = second.get_by_role("row", name=re.compile("audit"))
    assert "1.00" in row.inner_text()  # both said bad: Cohen's kappa over one item


def test_side_by_side_choice_becomes_a_preference_event(
    signed_in: Callable[..., Any], stack: dict[str, Any]
) -> None:
    gateway = stack["gateway"]
    _admin(
        gateway,
        "POST",
        "/admin/flags/support-bot/weights",
        {"weights": {"control": 50, "canary": 50}},
    )
    seen = {_chat(gateway, f"pair-user-{i}", "Summarise our refund policy") for i in range(16)}
    assert seen == {"control", "canary"}
    page = signed_in("reviewer")
    page.goto(gateway.base_url + "/console/compare")
    a = page.locator("input[name=response_a]").input_value()
    b = page.locator("input[name=response_b]").input_value()
    variants = {
        page.locator("input[name=variant_a]").input_value(),
        page.locator("input[name=variant_b]").input_value(),
    }
    assert variants == {"control", "canary"}
    # Blind: the page does not say which variant wrote which answer.
    assert "canary" not in page.locator("article").all_inner_texts()[0]
    _shot(stack, page, "compare")
    page.keyboard.press("a")
    assert "preference saved" in page.get_by_role("status").inner_text()
    (event,) = _wait_events(
        stack["spool"],
        lambda e: e["type"] == "feedback" and e["body"]["kind"] == "preference",
    )
    body = event["body"]
    assert (body["response_id"], body["other_response_id"], body["winner"]) == (a, b, "a")
    assert (body["source"], body["reviewer"]) == ("reviewer", "rui")
    assert "%" in page.get_by_role("row", name=re.compile("canary vs control")).inner_text()
    _shot(stack, page, "compare-after")
    # The choice becomes a DPO row: chosen A, rejected B, with both ids as provenance.
    out = stack["spool"].parent / "dataset-side-by-side"
    built = subprocess.run(
        [sys.executable, "-m", "cli", "datasets", "build", "--spool", str(stack["spool"]),
         "--keys", str(stack["spool"].parent / "keys"), "--out", str(out),
         "--test-fraction", "0", "--format", "jsonl"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    rows = [json.loads(line) for line in (out / "dpo" / "train.jsonl").read_text().splitlines()]
    (row,) = [r for r in rows if r["response_ids"] == [a, b]]
    assert row["rule"] == "preference"
    answers = {
        e["body"]["response_id"]: e["body"]
        for e in spooled_events(stack["spool"])
        if e["type"] == "completion"
    }  # content opened with the gateway's keys
    assert row["chosen"][-1]["content"] == answers[a]["response"]["text"]
    assert row["rejected"][-1]["content"] == answers[b]["response"]["text"]


def _shadow_events(spool: Path, primary_ids: set[str]) -> list[dict[str, Any]]:
    return [
        e
        for e in _events(spool)
        if e["type"] == "completion"
        and e["body"].get("role") == "shadow"
        and e["body"].get("pair_of") in primary_ids
    ]


def _has_admin_feedback(gateway: GatewayServer) -> bool:
    """The gateway takes reviewers' judgements at POST /admin/feedback (422 for an empty one)."""
    try:
        _admin(gateway, "POST", "/admin/feedback", {})
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code == 422
    return True


def _judged_pairs(gateway: GatewayServer, key: str) -> int:
    """Judged pairs the rollout's counters hold for a flag (0 where the gateway has none)."""
    doc = _admin(gateway, "GET", f"/admin/experiments/{key}")
    return sum(int(p["pairs"]) for p in (doc.get("shadow") or {}).get("pairs", []))


def test_shadow_settings_are_edited_through_the_admin_api_with_a_reason(
    signed_in: Callable[..., Any], stack: dict[str, Any]
) -> None:
    gateway = stack["gateway"]
    assert _admin(gateway, "GET", "/admin/flags/support-bot").get("shadow") is None
    page = signed_in("flag_editor")
    page.goto(gateway.base_url + "/console/flags/support-bot")
    assert "No shadow" in page.locator("#shadow-now").inner_text()
    # The admin API validates; its answer is shown on the page and nothing changes.
    page.get_by_label("Shadow variant").select_option("canary")
    page.get_by_label("Share of units (0 to 1)").fill("1.5")
    page.get_by_label("Reason for the shadow change").fill("too much")
    page.get_by_role("button", name="Save shadow").click()
    alert = page.get_by_role("alert").inner_text()
    assert "shadow not saved: 422" in alert
    assert "shadow.share" in alert
    assert _admin(gateway, "GET", "/admin/flags/support-bot").get("shadow") is None
    page.get_by_label("Share of units (0 to 1)").fill("0.5")
    page.get_by_label("Most in flight per gateway").fill("8")
    page.get_by_label("Tokens per minute per gateway (empty: no budget)").fill("20000")
    page.get_by_label("Reason for the shadow change").fill("mirror canary for review")
    page.get_by_role("button", name="Save shadow").click()
    assert "shadow: saved" in page.get_by_role("status").inner_text()
    shadow = _admin(gateway, "GET", "/admin/flags/support-bot")["shadow"]
    assert shadow == {
        "variant": "canary",
        "share": 0.5,
        "max_in_flight": 8,
        "timeout_s": 60.0,
        "stream": False,
        "tokens_per_minute": 20000,
    }
    change = _wait_events(
        stack["spool"],
        lambda e: (
            e["type"] == "flag_change" and e["body"].get("reason") == "mirror canary for review"
        ),
    )[0]["body"]
    assert (change["who"], change["what"]) == ("edda", "support-bot")
    assert change["before"]["shadow"] is None
    assert change["after"]["shadow"]["variant"] == "canary"
    assert "canary also answers 50% of units" in page.locator("#shadow-now").inner_text()
    history = page.get_by_role("region", name="Audit history").inner_text()
    assert "mirror canary for review" in history
    assert "shadow canary 50%" in history
    _shot(stack, page, "flag-shadow")
    page.get_by_label("Reason for the shadow change").fill("done reviewing")
    page.get_by_role("button", name="Remove shadow").click()
    assert "shadow: removed" in page.get_by_role("status").inner_text()
    assert _admin(gateway, "GET", "/admin/flags/support-bot").get("shadow") is None


def test_a_reviewer_judges_a_shadow_pair_and_the_preference_is_recorded(
    signed_in: Callable[..., Any], stack: dict[str, Any]
) -> None:
    gateway = stack["gateway"]
    flag = _admin(gateway, "GET", "/admin/flags/support-bot")
    shadow = {"variant": "canary", "share": 1.0}
    weights = {"control": 100.0, "canary": 0.0}
    body = {**flag, "shadow": shadow, "variants": [
        {**v, "weight": weights[v["name"]]} for v in flag["variants"]
    ]}  # fmt: skip
    _admin(gateway, "PUT", "/admin/flags/support-bot", body)
    try:
        primaries = {
            _chat_answer(gateway, f"shadow-user-{i}", f"Shadow question {i}: opening hours?")["id"]
            for i in range(3)
        }
        try:
            wait_until(
                lambda: len(_shadow_events(stack["spool"], primaries)) >= 3, 10, "shadow answers"
            )
        except TimeoutError:
            pytest.skip("this gateway does not run shadows yet (the shadow-gateway change)")
        page = signed_in("reviewer")
        page.goto(gateway.base_url + "/console/compare")
        assert "Shadow pair" in page.locator("#pair-kind").inner_text()
        a = page.locator("input[name=response_a]").input_value()
        b = page.locator("input[name=response_b]").input_value()
        shadows = {
            e["body"]["response_id"]: e["body"] for e in _shadow_events(stack["spool"], primaries)
        }
        shadow_id = a if a in shadows else b
        primary_id = b if shadow_id == a else a
        assert primary_id in primaries
        assert shadows[shadow_id]["pair_of"] == primary_id
        assert all("canary" not in t for t in page.locator("article").all_inner_texts())  # blind
        events = page.context.new_page()
        events.goto(gateway.base_url + "/console/events?flag=support-bot&type=completion")
        assert "shadow of" in events.locator("main").inner_text()
        events.close()
        _shot(stack, page, "compare-shadow")
        admin_feedback = _has_admin_feedback(gateway)
        judged_before = _judged_pairs(gateway, "support-bot")
        page.keyboard.press("b")
        status = page.get_by_role("status").inner_text()
        assert "preference saved" in status
        # Through the gateway's admin API when it has one (else the console's own events).
        assert ("has no /admin/feedback" in status) != admin_feedback
        (event,) = _wait_events(
            stack["spool"],
            lambda e: e["type"] == "feedback" and e["body"].get("other_response_id") in (a, b)
            and e["body"]["response_id"] in (a, b),
        )  # fmt: skip
        pref = event["body"]
        assert pref["kind"] == "preference"
        winner_id = {"a": pref["response_id"], "b": pref["other_response_id"]}[pref["winner"]]
        assert winner_id == b  # the answer shown as B won, whichever order the gateway keeps
        assert (pref["source"], pref["reviewer"], pref["queue"]) == (
            "reviewer",
            "rui",
            "side_by_side",
        )
        assert {pref["variant"], pref["other_variant"]} == {"control", "canary"}
        if admin_feedback:
            # Recorded as the answers' own (the signed ids say whose), counted by the rollout.
            assert pref["app"] != "console"
            wait_until(
                lambda: _judged_pairs(gateway, "support-bot") == judged_before + 1,
                10,
                "the preference in the rollout's counters",
            )
            page.goto(gateway.base_url + "/console/experiments/support-bot")
            judged = page.get_by_role("region", name="Judged pairs").inner_text()
            assert "canary vs control" in judged
            _shot(stack, page, "experiment-judged-pairs")
        else:
            assert pref["app"] == "console"
        # The pair is not offered to the same reviewer again.
        page.goto(gateway.base_url + "/console/compare")
        shown = {
            page.locator("input[name=response_a]").input_value(),
            page.locator("input[name=response_b]").input_value(),
        } if page.locator("input[name=response_a]").count() else set()  # fmt: skip
        assert shown != {a, b}
    finally:
        flag = _admin(gateway, "GET", "/admin/flags/support-bot")
        _admin(gateway, "PUT", "/admin/flags/support-bot", {**flag, "shadow": None})
        _admin(
            gateway,
            "POST",
            "/admin/flags/support-bot/weights",
            {"weights": {"control": 50, "canary": 50}},
        )


def test_overview_and_experiment_numbers_update_without_a_reload(
    signed_in: Callable[..., Any], stack: dict[str, Any]
) -> None:
    gateway = stack["gateway"]
    page = signed_in("viewer")

    def grows_live(total: Callable[[], int], users: str) -> None:
        page.evaluate("window.loopgateMarker = 'same page'")
        before = total()
        assert before >= 0
        for i in range(4):
            _chat(gateway, f"{users}-{i}", "Live numbers?")
        # htmx polls every 5 s; the page is never reloaded (the marker survives).
        wait_until(lambda: total() >= before + 4, 20, "the numbers to update", interval=0.5)
        assert page.evaluate("window.loopgateMarker") == "same page"

    def overview_total() -> int:
        cell = page.locator("#flag-rows tr", has_text="support-bot").locator("td.exposures")
        found = re.search(r"(\d+) in all", cell.inner_text())
        return int(found.group(1)) if found else -1

    grows_live(overview_total, "live-overview")
    page.goto(gateway.base_url + "/console/experiments/support-bot")

    def experiment_total() -> int:
        cells = page.locator("#experiment-live td.exposures").all_inner_texts()
        return sum(int(c) for c in cells) if cells else -1

    grows_live(experiment_total, "live-experiment")


def test_events_page_shows_redacted_events_with_filters(
    signed_in: Callable[..., Any], stack: dict[str, Any]
) -> None:
    gateway = stack["gateway"]
    _chat(gateway, "events-user", "Call me on +1 415 555 0100 please")
    page = signed_in("viewer")
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        page.goto(gateway.base_url + "/console/events?flag=support-bot&type=completion")
        text = page.locator("main").inner_text()
        assert "completion" in text
        assert "415 555 0100" not in text
        _shot(stack, page, "events")
    page.goto(gateway.base_url + "/console/events?flag=no-such-flag")
    assert "No events match." in page.locator("main").inner_text()


def test_a_form_without_its_csrf_token_is_refused(
    signed_in: Callable[..., Any], stack: dict[str, Any]
) -> None:
    gateway = stack["gateway"]
    page = signed_in("admin")
    before = _admin(gateway, "GET", "/admin/flags/support-bot")
    answer = page.request.post(
        gateway.base_url + "/console/flags/support-bot/kill",
        form={
            "reason": "no csrf",
            "confirm": "support-bot",
            "expected_version": str(before["version"]),
        },
    )
    assert answer.status == 403
    assert "CSRF" in answer.text()
    answer = page.request.post(
        gateway.base_url + "/console/flags/support-bot/kill",
        form={"csrf": "forged", "reason": "x", "confirm": "support-bot",
              "expected_version": str(before["version"])},
    )  # fmt: skip
    assert answer.status == 403
    # With the token but a broken form: a clear 422, nothing changed, no server error.
    csrf = page.locator("input[name=csrf]").first.input_value()
    for form in (
        {"weight_canary": "lots", "expected_version": str(before["version"])},
        {"weight_canary": "5"},
    ):
        answer = page.request.post(
            gateway.base_url + "/console/flags/support-bot/weights",
            form={"csrf": csrf, "reason": "r", **form},
        )
        assert answer.status == 422, answer.text()
    assert _admin(gateway, "GET", "/admin/flags/support-bot") == before


def test_a_viewer_cannot_change_anything_even_by_posting_directly(
    signed_in: Callable[..., Any], stack: dict[str, Any]
) -> None:
    gateway = stack["gateway"]
    page = signed_in("viewer")
    csrf = page.locator("input[name=csrf]").first.input_value()
    before = _admin(gateway, "GET", "/admin/flags/support-bot")
    version = str(before["version"])
    posts = {
        "/console/flags/support-bot/kill": {"confirm": "support-bot", "expected_version": version},
        "/console/flags/support-bot/weights": {"weight_canary": "0", "expected_version": version},
        "/console/experiments/rollout-bot/rollout/resume": {},
        "/console/flags/support-bot/shadow": {
            "shadow_variant": "canary",
            "shadow_share": "1",
            "expected_version": version,
        },
        "/console/review/audit": {"response_id": "lg1.x.y", "verdict": "good"},
        "/console/compare": {"response_a": "a", "response_b": "b", "winner": "a"},
    }
    for path, form in posts.items():
        answer = page.request.post(
            gateway.base_url + path, form={"csrf": csrf, "reason": "r", **form}
        )
        assert answer.status == 403, (path, answer.status)
        assert "has role viewer" in answer.text()
    assert _admin(gateway, "GET", "/admin/flags/support-bot") == before
    # And the admin API itself refuses the viewer's token.
    request = urllib.request.Request(
        gateway.base_url + "/admin/flags/support-bot/kill",
        data=b"{}",
        method="POST",
        headers={"Authorization": f"Bearer {TOKENS['viewer']}", "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403
    refused.value.close()


def test_every_page_renders_at_both_widths(
    signed_in: Callable[..., Any], stack: dict[str, Any]
) -> None:
    # Feedback on a few answers, so the statistics on the pages are not all empty.
    gateway = stack["gateway"]
    for i in range(12):
        answer = _chat_answer(gateway, f"page-user-{i}", "Is there a student discount?")
        kind = "thumbs_up" if i % 3 else "thumbs_down"
        _post(gateway, "/v1/feedback", {"response_id": answer["id"], "kind": kind})

    def counted() -> bool:
        doc = _admin(gateway, "GET", "/admin/experiments/support-bot")
        return sum(v["positive"] + v["negative"] for v in doc["report"]["variants"]) >= 12

    wait_until(counted, 15, "feedback in the experiment counts")
    paths = {
        "overview": "/console/flags",
        "flag": "/console/flags/support-bot",
        "experiment": "/console/experiments/support-bot",
        "queues": "/console/review",
        "review": "/console/review/reports",
        "compare": "/console/compare",
        "events": "/console/events",
    }
    for width in WIDTHS:
        page = signed_in("admin", width)
        for name, path in paths.items():
            page.goto(stack["gateway"].base_url + path)
            assert page.locator("h1").count() == 1
            # Nothing wider than the viewport (tables scroll inside their own box).
            overflow = page.evaluate("document.documentElement.scrollWidth")
            assert overflow <= width, (name, width, overflow)
            _shot(stack, page, f"page-{name}")
    assert len(list(stack["shots"].glob("page-*.png"))) == 2 * len(paths)


def test_loopgate_console_alone_acts_through_the_gateway_admin_api(
    browser: Any, stack: dict[str, Any], tmp_path: Path
) -> None:
    gateway = stack["gateway"]
    config = tmp_path / "console.yaml"
    config.write_text(
        yaml.safe_dump(
            {"events": {"spool": {"dir": str(tmp_path / "spool")}}, "ids": {"keys": ["c" * 40]}}
        )
    )
    port = free_port()
    log = (tmp_path / "console.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "console", "--gateway", gateway.base_url,
         "--config", str(config), "--port", str(port), "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    context = browser.new_context()
    try:

        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "console.log").read_text()
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=2) as answer:
                    return answer.status == 200
            except OSError:
                return False

        wait_until(up, 20, "loopgate console")
        page = context.new_page()
        page.goto(base + "/")
        page.get_by_label("Admin token").fill(TOKENS["flag_editor"])
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("**/console/flags")
        page.goto(base + "/console/flags/rollout-bot")
        page.get_by_label("Weight of canary").fill("7")
        page.get_by_label("Reason for the change").fill("from the standalone console")
        page.get_by_role("button", name="Save weights").click()
        assert "weights: saved" in page.get_by_role("status").inner_text()
        assert _weights(gateway, "rollout-bot")["canary"] == 7.0
        change = _wait_events(
            stack["spool"],
            lambda e: (
                e["type"] == "flag_change"
                and e["body"].get("reason") == "from the standalone console"
            ),
        )[0]["body"]
        assert change["who"] == "edda"  # the gateway checked the token and wrote the audit
    finally:
        context.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        log.close()
