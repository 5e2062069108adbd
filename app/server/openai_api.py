"""The OpenAI-compatible HTTP API: `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/chat/completions`
(streamed as server-sent events, or not). Each completion runs in its own thread behind the model's
turnstile; a client that goes away stops its answer at the next token, also while it waits in the queue."""

from __future__ import annotations

import asyncio
import json
import logging
import threading

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from app.errors import Cancelled, DoesNotFit, MissingInput, ModelLoadError, OmnibusError, OutOfMemory
from app.protocol import Settings
from app.server.access import Gate
from app.server.chat import ApiError, chunk, completion, new_id, parse_chat_request
from app.server.corpora import PREFIX, owned_ids, resolve_owned, visible
from app.server.request_guard import body_limit, chars_limit, check_request, read_body
from app.server.service import ContextTooLong, Service, UnknownModel, Usage

log = logging.getLogger(__name__)

POLL_S = 0.5  # how often a waiting request checks that its client is still there
_END = object()


def api_error(err: OmnibusError | Exception) -> ApiError:
    """The OpenAI-shaped error for what went wrong."""
    if isinstance(err, ApiError):
        return err
    if isinstance(err, UnknownModel):
        return ApiError(404, str(err), param="model", code="model_not_found")
    if isinstance(err, (ContextTooLong, DoesNotFit)):
        return ApiError(400, str(err), param="messages", code="context_length_exceeded")
    if isinstance(err, ModelLoadError):  # the model is being switched or opened: try again shortly
        return ApiError(503, str(err), type="server_error", code="model_loading")
    if isinstance(err, OutOfMemory):
        return ApiError(503, str(err), type="server_error", code="out_of_memory")
    if isinstance(err, MissingInput):
        return ApiError(400, str(err))
    if isinstance(err, OmnibusError):
        return ApiError(500, str(err), type="server_error")
    log.error("internal error in a chat completion", exc_info=err)
    return ApiError(500, f"internal error: {type(err).__name__}: {err}", type="server_error")


SERVED = {"/v1/models": "GET", "/v1/chat/completions": "POST"}


def not_served(method: str, path: str) -> ApiError:
    """404 for a path outside the API (405 for a served path asked with another method), listing what is served."""
    served = "GET /v1/models, GET /v1/models/{id}, POST /v1/chat/completions, and MCP at /mcp"
    if path.rstrip("/") in SERVED:
        return ApiError(405, f"{path} takes {SERVED[path.rstrip('/')]}, not {method}. Omnibus serves {served}.",
                        code="method_not_allowed")
    return ApiError(404, f"{method} {path} is not served here. Omnibus serves {served}.", code="unknown_url")


def error_response(err: ApiError) -> JSONResponse:
    retry = {"Retry-After": "10"} if err.status == 503 else None  # a model being opened is ready in a while
    return JSONResponse(err.body(), status_code=err.status, headers=retry)


class ClientGone(Exception):
    """The HTTP client disconnected."""


class Job:
    """One completion running in a thread of its own; its pieces reach the event loop through a queue."""

    def __init__(self, service: Service, prompt, settings: Settings, stops):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancel = threading.Event()
        self._next: asyncio.Future | None = None
        args = (service, prompt, settings, stops)
        threading.Thread(target=self._run, args=args, daemon=True, name="omnibus-api-completion").start()

    def _run(self, service, prompt, settings, stops) -> None:
        try:
            for item in service.run(prompt, settings, self.cancel, stops):
                self._put(item)
        except BaseException as err:  # handed to the request, which answers with it
            self._put(err)
        finally:
            self._put(_END)

    def _put(self, item) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    async def next(self, request: Request):
        """The next text piece, Usage, exception or _END; raises ClientGone (and cancels) if the client left."""
        if self._next is None:
            self._next = asyncio.ensure_future(self.queue.get())
        while True:
            done, _ = await asyncio.wait({self._next}, timeout=POLL_S)
            if done:
                item, self._next = self._next.result(), None
                return item
            if await request.is_disconnected():
                self.cancel.set()
                self._next.cancel()
                raise ClientGone()


def _sse(data) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


class OpenAIApi:
    """The routes, bound to one `Service` and one `Gate`."""

    def __init__(self, service: Service, gate: Gate):
        self.service, self.gate = service, gate

    def routes(self) -> list[Route]:
        return [Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/models/{model:path}", self.model, methods=["GET"]),
                Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
                Route("/v1/{rest:path}", self.not_served)]  # last: any other path or method under /v1

    async def not_served(self, request: Request) -> Response:
        """OpenAI's error shape for a path (or method) this server does not serve, saying what it does."""
        if (err := self.gate.check(request.headers)) is not None:
            return error_response(err)
        return error_response(not_served(request.method, request.url.path))

    def _models(self, login: str | None) -> list[dict]:
        """The loaded model, then the saved corpora this key's login may see (all of them without logins)."""
        models = self.service.models()
        return models[:1] + visible(models[1:], owned_ids(self.service.engine.store, login))

    async def models(self, request: Request) -> Response:
        if (err := self.gate.check(request.headers) or check_request(request.headers, "GET")) is not None:
            return error_response(err)
        login = self.gate.login(request.headers)
        return JSONResponse({"object": "list", "data": await run_in_threadpool(self._models, login)})

    async def model(self, request: Request) -> Response:
        if (err := self.gate.check(request.headers) or check_request(request.headers, "GET")) is not None:
            return error_response(err)
        name = request.path_params["model"]
        for entry in await run_in_threadpool(self._models, self.gate.login(request.headers)):
            if entry["id"] == name:
                return JSONResponse(entry)
        return error_response(api_error(UnknownModel(f"the model '{name}' does not exist")))

    def _served_as(self, name: str, login: str | None) -> str:
        """The model id to answer with: the loaded model, or a saved corpus this login may ask over; any other
        name is UnknownModel, listing only what this login sees (another login's corpora are not named)."""
        engine = self.service.engine
        if name == engine.model_name:
            return name
        owned = owned_ids(engine.store, login)
        if owned is None:  # no logins: the service resolves the name as always
            return name
        found = resolve_owned(engine, name, owned) if name.startswith(PREFIX) else None
        if found is None:
            names = ", ".join(m["id"] for m in self._models(login))
            raise UnknownModel(f"the model '{name}' does not exist; this server serves: {names}")
        return found

    async def chat_completions(self, request: Request) -> Response:
        try:
            chat, prompt, settings = await self._prepare(request)
        except (ApiError, OmnibusError) as err:
            return error_response(api_error(err))
        job = Job(self.service, prompt, settings, chat.stop)
        ident = new_id()
        try:
            first = await job.next(request)  # headers wait for the first piece: errors keep their status
        except ClientGone:
            return Response(status_code=499)
        if isinstance(first, BaseException) and not isinstance(first, Cancelled):
            return error_response(api_error(first))
        if chat.stream:
            return StreamingResponse(self._stream(request, job, ident, chat, first), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        text, item = [], first
        try:
            while not isinstance(item, Usage):
                if isinstance(item, BaseException):
                    return error_response(api_error(item))
                if item is _END:
                    return error_response(ApiError(500, "the answer ended without its usage", type="server_error"))
                text.append(item)
                item = await job.next(request)
        except ClientGone:
            return Response(status_code=499)
        return JSONResponse(completion(ident, chat.model, "".join(text), item))

    async def _prepare(self, request: Request):
        if (err := self.gate.check(request.headers) or check_request(request.headers, "POST")) is not None:
            raise err
        window = self.service.engine.window
        raw = await read_body(request.receive, request.headers, body_limit(window))  # refused while it is read
        try:
            body = json.loads(raw)
        except ValueError as err:
            raise ApiError(400, f"the body is not valid JSON: {err}") from err
        except RecursionError:
            raise ApiError(400, "the body's JSON is nested too deeply") from None
        del raw
        chat = parse_chat_request(body)
        chars = sum(map(len, [chat.system or "", *chat.users, *chat.assistants]))
        if chars > chars_limit(window):  # surely over the window: refused before any tokenizing
            raise ApiError(400, f"this model's maximum context length is {window:,} tokens; the messages are "
                                f"{chars:,} characters, more than that many tokens can hold", param="messages",
                           code="context_length_exceeded")
        service, login = self.service, self.gate.login(request.headers)

        def build():
            model = self._served_as(chat.model, login)
            prompt = service.build_prompt(model, chat.system, chat.users, chat.assistants)
            budget = service.check_window(prompt, chat.max_tokens)
            return prompt, Settings(max_new_tokens=budget, temperature=chat.temperature, top_p=chat.top_p,
                                    seed=chat.seed, json=chat.json)

        prompt, settings = await run_in_threadpool(build)  # tokenizing a long corpus takes a moment
        return chat, prompt, settings

    async def _stream(self, request: Request, job: Job, ident: str, chat, first):
        item = first
        try:
            yield _sse(chunk(ident, chat.model, {"role": "assistant", "content": ""}))
            while item is not _END:
                if isinstance(item, Usage):
                    yield _sse(chunk(ident, chat.model, {}, item.finish_reason))
                    if chat.include_usage:
                        yield _sse(chunk(ident, chat.model, {}, usage=item))
                elif isinstance(item, BaseException):
                    if not isinstance(item, Cancelled):
                        yield _sse(api_error(item).body())
                    break
                elif item:
                    yield _sse(chunk(ident, chat.model, {"content": item}))
                item = await job.next(request)
            yield "data: [DONE]\n\n"
        except ClientGone:
            pass
        finally:
            job.cancel.set()  # a client that went away mid-answer stops the decoding at the next token
