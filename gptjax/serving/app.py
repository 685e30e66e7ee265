"""The HTTP routes (FastAPI): OpenAI's chat completions and completions, models, health, the page.

`POST /v1/chat/completions` and `POST /v1/completions` answer one JSON object, or with
`"stream": true` server-sent events in OpenAI's chunk format ending with `data: [DONE]`.
Every error is OpenAI's {"error": {"message", "type", "param", "code"}}: 400 for a request
that cannot be served as sent, 404 for an unknown path, 503 when the engine has stopped. A
client that goes away (mid-stream, or while waiting for a whole reply) cancels its request,
which frees its batch slot at the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from gptjax.serving import protocol as proto
from gptjax.serving.protocol import ApiError
from gptjax.serving.service import Generation, Service

_FINISHED = ("stop", "length")
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _engine_failure(reason: str) -> ApiError:
    if reason == "shutdown":
        return ApiError(503, "the server is shutting down; retry on another server",
                        None, "shutdown", "server_error")
    return ApiError(500, f"generation failed: {reason}", None, "engine_error", "server_error")


def _validation_message(err: dict[str, Any]) -> tuple[str, str | None]:
    loc = [str(x) for x in err.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    if err.get("type") == "json_invalid":
        detail = (err.get("ctx") or {}).get("error", "")
        return f"the request body is not valid JSON ({detail}); send a JSON object", None
    if err.get("type") == "missing":
        if param is None:
            return "the request has no JSON body; send a JSON object", None
        return f"{param}: is required", param
    return f"{param}: {err.get('msg')}" if param else str(err.get("msg")), param


async def _collect(gen: Generation, http: HttpRequest) -> tuple[list[str], list[str]]:
    """Wait for every choice of a non-streamed request (cancelling it if the client leaves)."""
    n = len(gen.requests)
    texts, reasons = [""] * n, [""] * n
    left = n
    try:
        while left:
            try:
                ev = await asyncio.wait_for(gen.queue.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if await http.is_disconnected():
                    return texts, reasons
                continue
            texts[ev.index] += ev.text
            if ev.finish is not None:
                if ev.finish not in _FINISHED:
                    raise _engine_failure(ev.finish)
                reasons[ev.index] = ev.finish
                left -= 1
        return texts, reasons
    finally:
        gen.cancel()


async def _stream(gen: Generation, first: Callable[[int], Any] | None,
                  chunk: Callable[[int, str, str | None], Any],
                  usage: Callable[[], Any] | None) -> AsyncIterator[str]:
    """SSE lines of one request: an opening chunk per choice, text deltas, a finish chunk per
    choice, the usage chunk if asked, [DONE]. Cancelled (client gone) -> the requests end."""
    try:
        if first is not None:
            for i in range(len(gen.requests)):
                yield _sse(first(i))
        async for ev in gen.events():
            if ev.finish is not None and ev.finish not in _FINISHED:
                yield _sse(_engine_failure(ev.finish).body())
                return
            if ev.text:
                yield _sse(chunk(ev.index, ev.text, None))
            if ev.finish is not None:
                yield _sse(chunk(ev.index, "", ev.finish))
        if usage is not None:
            yield _sse(usage())
        yield "data: [DONE]\n\n"
    finally:
        gen.cancel()


def create_app(service: Service) -> FastAPI:
    """The app over a service; its lifespan starts the engine thread and stops it at exit."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if not service.engine.started:
            service.engine.start()
        yield
        await asyncio.to_thread(service.engine.stop)

    app = FastAPI(title="gptjax", lifespan=lifespan, docs_url=None, redoc_url=None)
    created = int(time.time())
    page = (importlib.resources.files("gptjax.serving") / "static" / "chat.html").read_text(
        encoding="utf-8")

    @app.exception_handler(ApiError)
    async def api_error(_, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_, e: RequestValidationError):
        message, param = _validation_message(e.errors()[0])
        return JSONResponse(proto.error_body(message, param=param), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_, e: HTTPException):
        kind = "invalid_request_error" if e.status_code < 500 else "server_error"
        return JSONResponse(proto.error_body(str(e.detail), kind), status_code=e.status_code)

    @app.get("/", response_class=HTMLResponse)
    async def chat_page():
        return page

    @app.get("/health")
    async def health():
        stats = service.engine.stats()
        ok = stats["error"] is None and service.engine.alive()
        return JSONResponse({"status": "ok" if ok else "unavailable", "model": service.name,
                             **stats}, status_code=200 if ok else 503)

    def model_card() -> dict[str, Any]:
        return {"id": service.name, "object": "model", "created": created, "owned_by": "gptjax",
                "context_length": service.context, "chat_template": service.chat_template}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        service.check_model(name)
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: proto.ChatRequest, http: HttpRequest):
        service.check_model(body.model)
        stop = body.stop_list()
        prompt = service.chat_prompt([{"role": m.role, "content": m.text()}
                                      for m in body.messages])
        asked = body.max_completion_tokens or body.max_tokens
        length = service.reply_length(prompt, asked, "messages")
        gen = service.generate(prompt, length, body.temperature, body.top_p, body.n, body.seed,
                               stop)
        rid, name = proto.new_id("chatcmpl"), service.name
        use = lambda: proto.usage(len(prompt), gen.completion_tokens())  # noqa: E731
        if body.stream:
            include = body.stream_options is not None and body.stream_options.include_usage
            return StreamingResponse(_stream(
                gen, lambda i: proto.chat_chunk(rid, name, i, {"role": "assistant",
                                                               "content": ""}),
                lambda i, text, fin: proto.chat_chunk(rid, name, i,
                                                      {"content": text} if text else {}, fin),
                (lambda: proto.usage_chunk(rid, name, "chat.completion.chunk", use()))
                if include else None), media_type="text/event-stream", headers=_SSE_HEADERS)
        texts, reasons = await _collect(gen, http)
        return proto.chat_completion(rid, name, texts, reasons, use())

    @app.post("/v1/completions")
    async def completions(body: proto.CompletionRequest, http: HttpRequest):
        service.check_model(body.model)
        stop = body.stop_list()
        prompt = service.text_prompt(body.prompt_value())
        length = service.reply_length(prompt, body.max_tokens, "prompt")
        gen = service.generate(prompt, length, body.temperature, body.top_p, body.n, body.seed,
                               stop)
        rid, name = proto.new_id("cmpl"), service.name
        use = lambda: proto.usage(len(prompt), gen.completion_tokens())  # noqa: E731
        if body.stream:
            include = body.stream_options is not None and body.stream_options.include_usage
            return StreamingResponse(_stream(
                gen, None,
                lambda i, text, fin: proto.completion_chunk(rid, name, i, text, fin),
                (lambda: proto.usage_chunk(rid, name, "text_completion", use()))
                if include else None), media_type="text/event-stream", headers=_SSE_HEADERS)
        texts, reasons = await _collect(gen, http)
        return proto.completion(rid, name, texts, reasons, use())

    return app
