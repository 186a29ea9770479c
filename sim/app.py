"""The simulator's HTTP face: vLLM's OpenAI routes plus /sim/* for tests, on aiohttp."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from sim.engine import Answer, SimEngine
from sim.metrics import CONTENT_TYPE
from sim.profile import SimProfile
from sim.protocol import (
    DONE,
    VLLM_VERSION,
    ChunkMaker,
    Job,
    Kind,
    SimError,
    chat_body,
    completion_body,
    invalid_field,
    new_id,
    not_found_model,
    parse_job,
    server_error,
    usage,
)
from sim.reward import pooling_body, pooling_inputs

ENGINE = web.AppKey("sim_engine", SimEngine)

_JSON = "application/json"
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8"}
# A stream that fails midway does so after this many content chunks (fewer if shorter).
_MIDSTREAM_AFTER = 3
_KNOWN_PATHS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/pooling",
        "/health",
        "/metrics",
        "/version",
        "/sim/requests",
        "/sim/stats",
        "/sim/reset",
    }
)


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type=_JSON)


def _error(err: SimError) -> web.Response:
    return web.Response(body=err.body(), status=err.status, content_type=_JSON)


class _Run:
    """One admitted request's bookkeeping: KV tokens held and whether it finished cleanly."""

    __slots__ = ("held", "reason")

    def __init__(self) -> None:
        self.held = 0
        self.reason = "abort"


async def _generate(request: web.Request, kind: Kind) -> web.StreamResponse:
    engine = request.app[ENGINE]
    arrived = time.perf_counter()
    raw = await request.read()
    invalid: SimError | None = None
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        body = raw.decode(errors="replace")
        loc = f"body.{err.pos}"
        invalid = invalid_field("json_invalid", loc, "JSON decode error", {}, error=err.msg)
    entry = engine.recorder.record(request.method, request.path, request.headers, body)
    try:
        if invalid is not None:
            raise invalid
        job = parse_job(kind, body, engine.styles, engine.profile.max_model_len)
    except SimError as err:
        engine.recorder.finish(entry, "rejected", err.status)
        return _error(err)
    fault = engine.draw_fault(job.stream)
    try:
        if fault == "stall":
            engine.recorder.finish(entry, "stalled")
            # Hang until the client gives up; the disconnect cancels this handler.
            await asyncio.Event().wait()
        if fault == "error":
            engine.recorder.finish(entry, "errors", 500)
            return _error(server_error("Simulated engine failure (error_rate)."))
        return await _admit(request, engine, job, entry, arrived, fault == "midstream")
    except asyncio.CancelledError:
        engine.recorder.finish(entry, "cancelled")
        raise


async def _admit(
    request: web.Request,
    engine: SimEngine,
    job: Job,
    entry: dict[str, Any],
    arrived: float,
    midstream: bool,
) -> web.StreamResponse:
    scheduler = engine.scheduler
    answers = engine.answers(job)
    # Requests beyond max_num_seqs wait here; their time to first token includes the wait.
    await scheduler.acquire()
    run = _Run()
    try:
        engine.metrics.prompt_tokens += job.prompt_tokens
        scheduler.hold(job.prompt_tokens)
        run.held = job.prompt_tokens
        ttft = engine.jittered(engine.profile.ttft)
        if ttft:
            await asyncio.sleep(ttft)
        if job.stream:
            return await _stream(request, engine, job, entry, answers, arrived, midstream, run)
        return await _respond(engine, job, entry, answers, arrived, run)
    finally:
        scheduler.free(run.held)
        scheduler.release()
        engine.metrics.finished(run.reason)


async def _respond(
    engine: SimEngine,
    job: Job,
    entry: dict[str, Any],
    answers: list[Answer],
    arrived: float,
    run: _Run,
) -> web.Response:
    metrics = engine.metrics
    metrics.ttft.observe(time.perf_counter() - arrived)
    longest = max(len(answer.pieces) for answer in answers)
    generated = sum(len(answer.pieces) for answer in answers)
    engine.scheduler.hold(generated)
    run.held += generated
    itl = engine.jittered(engine.profile.itl)
    if itl and longest > 1:
        await asyncio.sleep(itl * (longest - 1))
    for _ in range(longest - 1):
        metrics.itl.observe(itl)
    metrics.generation_tokens += generated
    metrics.e2e.observe(time.perf_counter() - arrived)
    rid = new_id(job.kind)
    entry["response_id"] = rid
    choices = [(a.text, a.finish_reason, a.stop_reason) for a in answers]
    make = chat_body if job.kind == "chat" else completion_body
    body = make(rid, job.model, int(time.time()), choices, usage(job.prompt_tokens, generated))
    run.reason = answers[0].finish_reason
    engine.recorder.finish(entry, "completed", 200)
    return web.Response(body=body, content_type=_JSON)


async def _stream(
    request: web.Request,
    engine: SimEngine,
    job: Job,
    entry: dict[str, Any],
    answers: list[Answer],
    arrived: float,
    midstream: bool,
    run: _Run,
) -> web.StreamResponse:
    metrics, scheduler = engine.metrics, engine.scheduler
    rid = new_id(job.kind)
    entry["response_id"] = rid
    chunks = ChunkMaker(job.kind, rid, job.model, job.include_usage)
    # Headers go out with the first token, as vLLM's StreamingResponse sends them.
    response = web.StreamResponse(headers=_SSE_HEADERS)
    try:
        await response.prepare(request)
        first = time.perf_counter()
        metrics.ttft.observe(first - arrived)
        if job.kind == "chat":
            for index in range(len(answers)):
                await response.write(chunks.role(index))
        steps = max(1, *(len(answer.pieces) for answer in answers))
        base_itl = engine.profile.itl
        last = first
        generated = 0
        for step in range(steps):
            if step:
                if base_itl:
                    await asyncio.sleep(engine.jittered(base_itl))
                now = time.perf_counter()
                metrics.itl.observe(now - last)
                last = now
            for index, answer in enumerate(answers):
                count = len(answer.pieces)
                if step < count - 1:
                    await response.write(chunks.token(index, answer.pieces[step]))
                elif step == count - 1 or (count == 0 and step == 0):
                    piece = answer.pieces[step] if count else ""
                    data = chunks.token(index, piece, answer.finish_reason, answer.stop_reason)
                    await response.write(data)
            produced = sum(1 for answer in answers if step < len(answer.pieces))
            generated += produced
            metrics.generation_tokens += produced
            scheduler.hold(produced)
            run.held += produced
            if midstream and step + 1 == min(_MIDSTREAM_AFTER, steps):
                # Drop the connection without the chunked terminator: a truncated stream.
                engine.recorder.finish(entry, "errors", 200)
                if request.transport is not None:
                    request.transport.close()
                return response
        if job.include_usage:
            await response.write(chunks.usage(usage(job.prompt_tokens, generated)))
        await response.write(DONE)
        await response.write_eof()
    except ConnectionError:
        # The client went away mid-stream (without handler cancellation we learn it here).
        engine.recorder.finish(entry, "cancelled")
        return response
    metrics.e2e.observe(time.perf_counter() - arrived)
    run.reason = answers[0].finish_reason
    engine.recorder.finish(entry, "completed", 200)
    return response


async def _chat(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "chat")


async def _completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "completion")


def _model_card(name: str, root: str, parent: str | None, max_len: int | None) -> dict[str, Any]:
    created = int(time.time())
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "vllm",
        "root": root,
        "parent": parent,
        "max_model_len": max_len,
        "permission": [
            {
                "id": "modelperm-" + new_id("completion")[5:],
                "object": "model_permission",
                "created": created,
                "allow_create_engine": False,
                "allow_sampling": True,
                "allow_logprobs": True,
                "allow_search_indices": False,
                "allow_view": True,
                "allow_fine_tuning": False,
                "organization": "*",
                "group": None,
                "is_blocking": False,
            }
        ],
    }


async def _pooling(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    raw = await request.read()
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        loc = f"body.{err.pos}"
        return _error(invalid_field("json_invalid", loc, "JSON decode error", {}, error=err.msg))
    entry = engine.recorder.record(request.method, request.path, request.headers, body)
    try:
        model = body.get("model") if isinstance(body, dict) else None
        if model is not None and model not in engine.styles:
            raise not_found_model(str(model), engine.served_model)
        texts, activation = pooling_inputs(body)
    except SimError as err:
        engine.recorder.finish(entry, "rejected", err.status)
        return _error(err)
    fault = engine.draw_fault(False)
    try:
        if fault == "stall":
            engine.recorder.finish(entry, "stalled")
            await asyncio.Event().wait()  # until the client gives up
        if fault == "error":
            engine.recorder.finish(entry, "errors", 500)
            return _error(server_error("Simulated engine failure (error_rate)."))
        # A pooling pass is one prefill: about a time to first token, no decoding.
        await asyncio.sleep(engine.profile.ttft)
    except asyncio.CancelledError:
        engine.recorder.finish(entry, "cancelled")
        raise
    profile = engine.profile
    served = str(model or engine.served_model)
    payload = pooling_body(texts, served, profile.seed, profile.reward_terms, activation)
    engine.recorder.finish(entry, "completed", 200)
    return _json(payload)


async def _models(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    base = engine.served_model
    cards = [_model_card(base, base, None, engine.profile.max_model_len)]
    cards += [_model_card(name, f"/adapters/{name}", base, None) for name in engine.adapters]
    return _json({"object": "list", "data": cards})


async def _health(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def _version(request: web.Request) -> web.Response:
    return _json({"version": VLLM_VERSION})


async def _metrics(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    scheduler = engine.scheduler
    text = engine.metrics.render(scheduler.running, scheduler.waiting, scheduler.kv_usage)
    return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})


async def _sim_requests(request: web.Request) -> web.Response:
    return _json({"requests": list(request.app[ENGINE].recorder.entries)})


async def _sim_stats(request: web.Request) -> web.Response:
    return _json(request.app[ENGINE].stats())


async def _sim_reset(request: web.Request) -> web.Response:
    request.app[ENGINE].reset()
    return _json({"reset": True})


async def _fallback(request: web.Request) -> web.Response:
    # FastAPI's answers, which is what a client of vLLM sees for a wrong route or method.
    if request.path in _KNOWN_PATHS:
        return _json({"detail": "Method Not Allowed"}, status=405)
    return _json({"detail": "Not Found"}, status=404)


def create_sim_app(
    profile: SimProfile,
    served_model: str,
    *,
    adapters: Mapping[str, str] | None = None,
    history: int = 256,
) -> web.Application:
    """An aiohttp app that answers as `vllm serve` would; adapters map LoRA names to styles."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[ENGINE] = SimEngine(profile, served_model, adapters, history)
    add = app.router.add_route
    add("POST", "/v1/chat/completions", _chat)
    add("POST", "/v1/completions", _completions)
    add("GET", "/v1/models", _models)
    add("POST", "/pooling", _pooling)
    add("GET", "/health", _health)
    add("GET", "/version", _version)
    add("GET", "/metrics", _metrics)
    add("GET", "/sim/requests", _sim_requests)
    add("GET", "/sim/stats", _sim_stats)
    add("POST", "/sim/reset", _sim_reset)
    add("*", "/{tail:.*}", _fallback)
    return app


async def start_sim(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve `app` inside a running loop; cancel handlers when clients disconnect."""
    # A short shutdown grace: stalled requests would otherwise hold a stop for a minute.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        with contextlib.suppress(Exception):
            await runner.cleanup()
        raise
    return runner
