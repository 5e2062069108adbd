"""Omnibus as an MCP server (the `mcp` package, streamable HTTP at `/mcp`): tools to list the saved corpora,
add files, load them (or a saved corpus) and ask. Each MCP session has its own documents and conversation;
answers take their turn on the model with everyone else's."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
import weakref
from pathlib import Path

import anyio
from mcp.server.fastmcp import Context, FastMCP
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers

from app.engine.grammar import SchemaError, grammar
from app.errors import OmnibusError
from app.prompt import default_system_prompt, json_question
from app.protocol import JsonFormat, Settings
from app.server.access import Gate
from app.server.chat import ApiError
from app.server.corpora import PREFIX, entry_for, model_id, owned_ids, resolve_owned, saved_for_model, visible
from app.server.openai_api import error_response
from app.server.request_guard import check_request, read_body, replay
from app.server.service import Service, Usage
from app.sharing.documents import Documents, add_files

MCP_BODY_BYTES = 8 * 2**20  # a tool call: paths and a question, never a corpus
INSTRUCTIONS = ("Omnibus answers questions over whole documents, books and codebases held in one long context. "
                "Use list_corpora to see the corpora saved on the server, then load one (or add_files, then "
                "load) and ask. Follow-up questions reuse the loaded documents and are fast.")


class Desk:
    """One MCP session's documents (or chosen saved corpus) and conversation."""

    def __init__(self):
        self.session = Documents()  # the files added, ingested and scanned for secrets
        self.saved: str | None = None  # an omnibus/ID chosen with load(corpus=...)
        self.login: str | None = None  # whose key opened this session (None: a server without logins)
        self.record_id = ""  # the saved record of its loaded documents, under its login
        self.questions: list[str] = []
        self.answers: list[str] = []


class Tools:
    """The MCP tools over one Service. add_files reads only under `files_root`, else anywhere when `any_path`.

    Made with no service (`omnibus mcp` loads its model in the background), `list_corpora` answers at once from
    `store` (the saved corpora of `model`), and the other tools wait until `serve_with` or `failed` is called.
    `private` (and the store's folder) are never read as documents: the app's own corpora, conversations, logins.
    """

    def __init__(self, service: Service | None, files_root: str | None = None, any_path: bool = True,
                 store=None, model: str = "", private=()):
        self.any_path, self.store, self.model = any_path, store, model
        self.files_root = Path(files_root).resolve() if files_root else None
        self.private = [Path(p).expanduser().resolve() for p in [*private, *([store.root] if store else [])]]
        self.service: Service | None = None
        self._ready, self._failure = threading.Event(), ""
        if service is not None:
            self.serve_with(service)
        self.desks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.login_of = None  # headers -> the login of their key (McpEndpoint sets its Gate's `login`)
        self.server = FastMCP("omnibus", instructions=INSTRUCTIONS, stateless_http=False,
                              transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))
        for tool in (self.list_corpora, self.add_files, self.load, self.ask):
            self.server.add_tool(tool)

    def serve_with(self, service: Service) -> None:
        """The model is loaded: the tools that wait for it go ahead."""
        self.service = service
        store = service.engine.store  # the app's own saved corpora and conversations: never read as documents
        if store is not None:
            self.private.append(Path(store.root).expanduser().resolve())
        self._ready.set()

    def failed(self, message: str) -> None:
        """The model could not be loaded: the tools that wait for it answer with `message`."""
        self._failure = message
        self._ready.set()

    async def _service(self) -> Service:
        if not self._ready.is_set():
            await anyio.to_thread.run_sync(self._ready.wait)
        if self.service is None:
            raise ValueError(f"the model could not be loaded: {self._failure}")
        return self.service

    def _login(self, ctx) -> str | None:
        """The login whose key made this call (None without logins, and over stdio)."""
        request = getattr(getattr(ctx, "request_context", None), "request", None) if ctx is not None else None
        if self.login_of is None or request is None:
            return None
        return self.login_of(request.headers)

    def _desk(self, ctx: Context) -> Desk:
        desk = self.desks.get(ctx.session)
        login = self._login(ctx)
        if desk is None:
            desk = self.desks.setdefault(ctx.session, Desk())
            desk.login = login
        elif desk.login != login:  # another login's key on this session: not its documents
            raise ValueError("this MCP session belongs to another API key; start a new session")
        return desk

    def _store(self):
        return self.service.engine.store if self.service is not None else self.store

    async def list_corpora(self, ctx: Context = None) -> list[dict]:
        """The corpora saved on this server: the id to pass to `load`, its name, documents and tokens."""
        owned = await anyio.to_thread.run_sync(owned_ids, self._store(), self._login(ctx))
        if self.service is None:  # the model is still loading: the corpora saved for it
            entries = await anyio.to_thread.run_sync(saved_for_model, self.store, self.model)
            return [{"id": model_id(e), "name": e.name, "documents": e.documents, "tokens": e.tokens}
                    for e in visible(entries, owned)]
        models = await anyio.to_thread.run_sync(self.service.models)
        return [{"id": m["id"], "name": m["name"], "documents": m["documents"], "tokens": m["corpus_tokens"]}
                for m in visible(models[1:], owned)]

    async def add_files(self, paths: list[str], ctx: Context) -> str:
        """Add files, folders or .zip/.tar.gz archives (paths on the server's disk) after the documents added
        so far. Returns the documents with their token counts, the files left out and why."""
        await self._service()  # documents are counted with the model's own tokenizer
        if self.files_root is None and not self.any_path:
            raise ValueError("this server listens on the network and was given no --files-root: add_files reads "
                             "no files (start it with --files-root DIR to allow a folder)")
        for path in paths:
            resolved = Path(path).expanduser().resolve()
            if self.files_root is not None and not resolved.is_relative_to(self.files_root):
                raise ValueError(f"{path} is outside {self.files_root}, the folder this server reads files from")
            if any(resolved.is_relative_to(p) or p.is_relative_to(resolved) for p in self.private):
                raise ValueError(f"{path} holds Omnibus's own saved corpora, logins or credentials; add_files does "
                                 "not read them")
        desk = self._desk(ctx)
        await anyio.to_thread.run_sync(self._ingest, desk, paths)
        desk.saved, desk.questions, desk.answers = None, [], []
        corpus = desk.session.corpus
        lines = [f"{len(corpus.documents)} documents, {corpus.total_tokens:,} tokens:"]
        lines += [f"  {n}. {d.source} ({d.kind}, {d.tokens:,} tokens)" for n, d in enumerate(corpus.documents, 1)]
        lines += [f"  left out: {s.source}: {s.reason}" for s in corpus.skipped]
        if desk.session.secrets:
            lines.append("likely secrets (API keys, private keys, passwords) in: " + ", ".join(desk.session.secrets))
        return "\n".join(lines)

    def _ingest(self, desk: Desk, paths) -> None:
        try:
            add_files(desk.session, paths, self.service.engine)
        except OmnibusError as err:
            raise ValueError(str(err)) from err

    async def load(self, ctx: Context, corpus: str = "") -> str:
        """Load the documents added with add_files into the model, or, with `corpus` (an id from
        list_corpora), a saved corpus. Starts a new conversation."""
        desk = self._desk(ctx)
        service = await self._service()
        if corpus:
            owned = await anyio.to_thread.run_sync(owned_ids, service.engine.store, desk.login)
            found = resolve_owned(service.engine, corpus, owned) if corpus.startswith(PREFIX) else None
            if owned is not None and found is None:  # another login's corpus is not named, nor told apart
                raise ValueError(f"there is no saved corpus {corpus!r}: list_corpora lists the ones you may load")
            desk.saved = found or corpus
        elif desk.session.corpus is None:
            raise ValueError("there are no documents yet: add_files first, or load a saved corpus by its id")
        else:
            desk.saved = None
        desk.questions, desk.answers = [], []
        stats = await anyio.to_thread.run_sync(lambda: service.load(self._prompt(desk, "")))
        if desk.saved is None and desk.login is not None:
            await anyio.to_thread.run_sync(self._keep, desk, stats)
        where = {"prefill": "read", "memory": "already in memory", "disk": "reopened from disk"}
        return (f"Loaded {stats.tokens:,} tokens ({where.get(stats.source, stats.source)}, "
                f"{stats.tokens - stats.reused:,} new) in {stats.seconds + stats.disk_seconds:.1f} s. Ask away.")

    async def ask(self, question: str, ctx: Context, max_tokens: int = 512,
                  json_schema: dict | None = None) -> dict[str, object]:
        """Ask a question about the loaded documents; earlier questions of this session are kept as context.
        Returns the answer, and the tokens it read (of which cached) and wrote. With `json_schema` (a JSON
        schema), the answer is JSON that matches it (decoded under its grammar), also given parsed as `json`:
        for extracting a table of facts from the whole corpus."""
        desk = self._desk(ctx)
        service = await self._service()
        if desk.saved is None and desk.session.corpus is None:
            raise ValueError("nothing is loaded: load a saved corpus, or add_files and load, first")
        fmt = None
        if json_schema is not None:
            fmt = JsonFormat(json_schema)
            try:
                grammar(fmt)
            except SchemaError as err:
                raise ValueError(str(err)) from err
        prompt = self._prompt(desk, question if fmt is None else json_question(question, fmt))
        budget = service.check_window(prompt, None)  # what the window leaves for the answer
        settings = Settings(max_new_tokens=budget if max_tokens <= 0 else min(max_tokens, budget), json=fmt)
        pieces = await anyio.to_thread.run_sync(lambda: list(service.run(prompt, settings)))
        usage: Usage = pieces[-1]
        answer = "".join(pieces[:-1])
        desk.questions.append(question)
        desk.answers.append(answer)
        out = {"answer": answer, "prompt_tokens": usage.prompt_tokens, "cached_tokens": usage.cached_tokens,
               "completion_tokens": usage.completion_tokens, "finish_reason": usage.finish_reason,
               "seconds_to_first_token": round(usage.ttft_s, 3)}
        if fmt is not None:
            out["json"] = _parsed(answer)  # None only if cut off before it could close
        return out

    def _keep(self, desk: Desk, stats) -> None:
        """With logins: the loaded documents as a saved record of this key's login (as the page saves its loads),
        so that its list_corpora and /v1/models list them, and no other login's do."""
        engine = self.service.engine
        store, corpus = engine.store, desk.session.corpus
        system = default_system_prompt(engine.model_name)
        entry = entry_for(engine, corpus.token_ids().tolist(), system) if store is not None else None
        if entry is None:  # not on disk (--no-disk-cache, or the disk was full): nothing to list
            return
        from app.sharing.saved import Library

        desk.record_id = desk.record_id or uuid.uuid4().hex
        Library(store.root).save(desk.login, desk.record_id, corpus=corpus, conversation={
            "model": engine.model_name, "sources": [d.source for d in corpus.documents],
            "tokens": corpus.total_tokens, "system_prompt": system,
            "instructions": "MCP", "kv_id": entry.id, "prefix_tokens": stats.tokens, "exchanges": []})

    def _prompt(self, desk: Desk, question: str):
        service = self.service
        try:
            if desk.saved is not None:
                return service.build_prompt(desk.saved, None, [*desk.questions, question], desk.answers)
            system = default_system_prompt(service.engine.model_name)
            return service.prompt(service.engine.model_name, system, desk.session.corpus.token_ids().tolist(),
                                  [*desk.questions, question], desk.answers, on_disk=True,
                                  sources=[d.source for d in desk.session.corpus.documents])
        except OmnibusError as err:
            raise ValueError(str(err)) from err


def _parsed(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None


class McpEndpoint:
    """`/mcp`: the streamable-HTTP transport behind the key check. Its session manager starts with the first
    request, in a task of its own on the server's event loop."""

    def __init__(self, tools: Tools, gate: Gate):
        tools.server.streamable_http_app()  # makes the session manager
        self.manager, self.gate, self.tools = tools.server.session_manager, gate, tools
        tools.login_of = gate.login  # each tool call sees only its key's login's saved corpora
        self._ready: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    async def _hold(self) -> None:
        async with self.manager.run():
            self._ready.set()
            await asyncio.Event().wait()  # for as long as the server runs

    async def __call__(self, scope, receive, send) -> None:
        headers = Headers(scope=scope)
        if (err := self.gate.check(headers) or check_request(headers, scope.get("method", ""))) is not None:
            await error_response(err)(scope, receive, send)
            return
        if scope.get("method") == "POST":  # read here, with its cap, then handed to the MCP transport
            try:
                receive = replay(await read_body(receive, headers, MCP_BODY_BYTES), receive)
            except ApiError as err:
                await error_response(err)(scope, receive, send)
                return
        if self._task is None:
            self._ready = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._hold())
        await self._ready.wait()
        await self.manager.handle_request(scope, receive, send)
