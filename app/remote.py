"""The remote engine: the same questions, sent to an OpenAI-compatible server (vLLM, SGLang, llama.cpp).

The server does the tensor and pipeline parallelism, the fp8 KV cache and the prefix caching. We send
the prompt that the local engine would run (`app.prompt.build_messages`: system prompt and corpus first,
the question last), so the corpus is a byte-identical prefix of every request and the server's prefix
cache reuses it. `load` sends a 1-token warm-up request that makes the server prefill (and cache) the
corpus before the first question. `ask` streams the answer over server-sent events.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

from app import planner
from app.protocol import AnswerStats, LoadCost, LoadStats, PrefillProgress, Settings
from app.errors import BackendError, CorpusTooLarge, NoCorpus
from app.remote_http import _api_root, _window_of, _error_message, _message_of, _is_context_error, _reason, _events, _wait
from app.prompt import DEFAULT_SYSTEM_PROMPT, Turn, build_messages, encode_prompt, fit_turns

log = logging.getLogger(__name__)

TEMPLATE_ALLOWANCE = 64  # chat-template tokens around the messages (role headers, turn ends)


@dataclass
class RemotePlan(planner.Plan):
    """A plan against a server's window: no devices here, the server owns the memory."""

    server: str = ""

    def summary(self) -> str:
        if not self.window:
            return (f"{self.tokens:,} tokens; {self.server} does not report its context length, "
                    "so the server itself will accept or refuse the corpus")
        verdict = "fit" if self.fits else "do NOT fit"
        return (f"{self.tokens:,} tokens {verdict} the window of {self.server} "
                f"({self.window:,} tokens; up to {self.max_tokens:,} before the question)")


@dataclass
class RemoteAnswerStats(AnswerStats):
    """AnswerStats plus where the counts came from: the server's `usage`, or our own count."""

    usage_from_server: bool = False
    cached_from_server: bool = False


class RemoteEngine:
    """A corpus and its questions, answered by an OpenAI-compatible `/v1/chat/completions` server."""

    name = "openai"
    store = None  # the server keeps its own prefix cache; nothing is saved on this machine
    attention = "server"  # the server chooses its own attention kernels
    counters = None  # what the server ran is its own

    def __init__(self, base_url: str | None, *, api_key_env: str | None = None, served_model: str | None = None,
                 max_model_len: int | None = None, timeout: float = 3600.0, connect_timeout: float = 10.0,
                 tokenizer=None):
        """Connect and read the served models; `max_model_len` overrides what the server reports.

        `timeout` is the longest wait for the next byte of an answer (a first prefill of millions of
        tokens takes minutes); `connect_timeout` the longest wait to reach the server.
        """
        if not base_url:
            raise BackendError("the openai backend needs the server's address: --base-url http://HOST:PORT/v1")
        self.base_url = _api_root(base_url)
        headers = {}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise BackendError(f"the environment variable {api_key_env} (from --api-key-env) is not set")
            headers["Authorization"] = f"Bearer {key}"
        self.timeout = timeout
        self._client = httpx.Client(base_url=self.base_url, headers=headers,
                                    timeout=httpx.Timeout(timeout, connect=connect_timeout))
        models = self._models()
        names = [m.get("id", "") for m in models]
        if served_model and served_model not in names:
            raise BackendError(f"{self.base_url} does not serve the model '{served_model}'; "
                               f"it serves: {', '.join(names) or 'nothing'}")
        self.model_name = served_model or names[0]
        entry = models[names.index(self.model_name)]
        self.window = int(max_model_len or _window_of(entry) or self._props_window() or 0)  # 0: not reported
        self.reserve = planner.question_reserve(self.window)  # kept for questions and answers
        if tokenizer is None:
            from ingest import load_tokenizer

            tokenizer = load_tokenizer()
        self.tokenizer = tokenizer
        self.system_prompt = DEFAULT_SYSTEM_PROMPT
        self.corpus_text: str | None = None
        self.corpus_tokens = 0  # system prompt + corpus, as the server counted them at load (or our estimate)

    # -- talking to the server --
    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as err:
            raise self._transport_error(err) from err
        if response.status_code != 200:
            raise self._http_error(response)
        return response

    def _transport_error(self, err: httpx.HTTPError) -> BackendError:
        if isinstance(err, httpx.ConnectError):
            return BackendError(f"cannot reach the server at {self.base_url} ({_reason(err)}); is it running?")
        if isinstance(err, httpx.TimeoutException):
            kind = "connect to" if isinstance(err, httpx.ConnectTimeout) else "get an answer from"
            limit = self._client.timeout.connect if kind == "connect to" else self.timeout
            shown = f"{limit:,.0f}" if limit >= 10 else f"{limit:g}"
            return BackendError(f"could not {kind} the server at {self.base_url} within {shown} s")
        return BackendError(f"the connection to {self.base_url} failed: {_reason(err)}")

    def _http_error(self, response: httpx.Response) -> BackendError:
        status, message = response.status_code, _error_message(response)
        if status in (401, 403):
            return BackendError(f"the server refused the API key (HTTP {status}: {message}); "
                                "pass the variable that holds it with --api-key-env")
        if status == 404 and "model" in message.lower():
            names = ", ".join(m.get("id", "") for m in self._models(quiet=True)) or "unknown"
            return BackendError(f"the server does not serve the model '{self.model_name}' (HTTP 404: {message}); "
                                f"it serves: {names}")
        if status == 404:
            return BackendError(f"no OpenAI API at {self.base_url} (HTTP 404); the address usually ends in /v1")
        if status == 400 and _is_context_error(message):
            return BackendError(f"the prompt is longer than the server's context (HTTP 400: {message})")
        return BackendError(f"the server answered HTTP {status}: {message}")

    def _models(self, quiet: bool = False) -> list[dict]:
        """The server's `/v1/models` entries (at least one), or [] when `quiet` and it fails."""
        try:
            data = self._request("GET", "/models").json().get("data") or []
        except (BackendError, ValueError) as err:
            if quiet:
                return []
            if isinstance(err, BackendError):
                raise
            raise BackendError(f"{self.base_url}/models did not return JSON; is this an OpenAI API?") from err
        if not data and not quiet:
            raise BackendError(f"the server at {self.base_url} lists no models")
        return data

    def _props_window(self) -> int:
        """llama.cpp's server reports the context it was started with at `/props` (beside /v1)."""
        parts = urlsplit(self.base_url)
        root = parts.path[:-3] if parts.path.endswith("/v1") else parts.path
        try:
            response = self._client.get(urlunsplit(parts._replace(path=root + "/props")), timeout=5.0)
            props = response.json() if response.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):
            return 0
        settings = props.get("default_generation_settings") or {}
        return int(settings.get("n_ctx") or props.get("n_ctx") or 0)

    # -- planning --
    def _overhead_tokens(self, system_prompt: str | None = None) -> int:
        """Tokens of the prompt besides the corpus: the system prompt and the chat template."""
        system = self.system_prompt if system_prompt is None else system_prompt
        return self._count(system) + TEMPLATE_ALLOWANCE

    def prompt_overhead(self, system_prompt: str | None = None) -> int:
        """Tokens that the system prompt and the chat template put before the documents (our estimate)."""
        return self._overhead_tokens(system_prompt)

    def _count(self, text: str) -> int:
        if not text:
            return 0
        return len(self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def plan(self, tokens: int) -> RemotePlan:
        """Whether a prompt prefix (system prompt and corpus) of `tokens` fits the server's window, leaving
        room for questions and answers. As with the local engine, `tokens` counts the whole prefix."""
        server = f"{self.model_name} at {self.base_url}"
        if not self.window:
            return RemotePlan(tokens, "server", "server", True, 0, 0, 0.0, 0.0, server=server)
        max_tokens = max(self.window - self.reserve, 0)
        fits = tokens <= max_tokens
        reason = "" if fits else (f"the corpus and instructions are {tokens:,} tokens; {server} takes "
                                  f"{self.window:,} ({self.reserve:,} kept for the question and answer)")
        return RemotePlan(tokens, "server", "server", fits, max_tokens, self.window, 0.0, 0.0, reason=reason,
                          server=server)

    def default_settings(self) -> Settings:
        """The defaults: the server's model is not one whose answers we shorten."""
        return Settings()

    def load_cost(self, corpus, system_prompt: str | None = None, reuse_limit: int | None = None) -> LoadCost | None:
        """None: what the server has cached, and how fast it reads, it does not say."""
        return None

    # -- loading --
    def load(self, corpus, *, system_prompt: str | None = None, progress=None, cancel=None,
             reuse_limit: int | None = None, plan=None) -> LoadStats:
        """Check the corpus against the window, then have the server prefill and cache it (`plan`: not used; the
        window check is cheap).

        The warm-up asks for one token with the corpus and an empty question; its prompt shares
        everything up to the question with every later request. Raises CorpusTooLarge before sending
        when the plan refuses, or when the server refuses the prompt as too long.
        """
        if system_prompt is not None:
            self.system_prompt = system_prompt
        overhead = self._overhead_tokens()
        estimate = corpus.total_tokens + overhead
        plan = self.plan(estimate)
        if not plan.fits:
            raise CorpusTooLarge(f"{plan.reason}. {planner.fit_advice(plan, self.reserve, overhead)}")
        self.corpus_text = None
        if progress is not None:
            progress(PrefillProgress(0, estimate, 0.0, 0.0))
        messages = build_messages(corpus.text, "", (), self.system_prompt)
        payload = {"model": self.model_name, "messages": messages, "max_tokens": 1, "temperature": 0.0,
                   "stream": False}
        started = time.perf_counter()
        try:
            reply = _wait(lambda: self._request("POST", "/chat/completions", json=payload).json(), cancel)
        except BackendError as err:
            if "longer than the server's context" in str(err):
                raise CorpusTooLarge(f"the server refused the corpus ({corpus.total_tokens:,} tokens by our "
                                     f"count): {err}") from err
            raise
        seconds = time.perf_counter() - started
        usage = reply.get("usage") or {}
        tokens = int(usage.get("prompt_tokens") or estimate)
        reused = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        if reuse_limit is not None:  # the server's cache is shared: say only what this caller loaded itself
            reused = min(reused, reuse_limit)
        self.corpus_text, self.corpus_tokens = corpus.text, tokens
        if progress is not None:
            progress(PrefillProgress(tokens, tokens, (tokens - reused) / max(seconds, 1e-9), 0.0))
        return LoadStats(tokens, reused, seconds, (tokens - reused) / seconds if seconds > 0 else 0.0, "server")

    # -- answering --
    def ask(self, question: str, history=(), settings: Settings | None = None, cancel=None):
        """Stream an answer to `question` about the loaded corpus: text pieces, then one AnswerStats.

        Earlier turns (`history`, a list of Turn) are kept while they fit, oldest dropped first. A stream
        that breaks off keeps the text received so far and ends with finish_reason "cut".
        """
        if self.corpus_text is None:
            raise NoCorpus("no corpus is loaded on the server: load it before asking")
        settings = settings or Settings()
        history, dropped = self._fit_turns(question, list(history), settings.max_new_tokens)
        payload = {"model": self.model_name, "stream": True, "stream_options": {"include_usage": True},
                   "messages": build_messages(self.corpus_text, question, history, self.system_prompt),
                   "max_tokens": settings.max_new_tokens, "temperature": settings.temperature,
                   "top_p": settings.top_p}
        if settings.seed is not None:
            payload["seed"] = settings.seed
        if settings.json is not None:  # the server decodes under it (vLLM, SGLang, llama.cpp, Omnibus do)
            payload["response_format"] = settings.json.response_format()
        started = time.perf_counter()
        first_at, pieces, usage, reason = None, [], {}, "cut"
        try:
            with self._client.stream("POST", "/chat/completions", json=payload) as response:
                if response.status_code != 200:
                    response.read()
                    raise self._http_error(response)
                for event in _events(response):
                    if cancel is not None and cancel.is_set():
                        reason = "cancelled"
                        break
                    if event is None:  # [DONE]
                        reason = reason if reason != "cut" else "stop"
                        break
                    if event.get("error"):
                        raise BackendError(f"the server stopped the answer: {_message_of(event)}")
                    usage = event.get("usage") or usage
                    for choice in event.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content") or ""
                        if text:
                            first_at = first_at or time.perf_counter()
                            pieces.append(text)
                            yield text
                        if choice.get("finish_reason"):
                            reason = choice["finish_reason"]
        except httpx.HTTPError as err:
            if not pieces:
                raise self._transport_error(err) from err
            log.warning("the answer stream broke off after %d pieces: %s", len(pieces), _reason(err))
            reason = "cut"
        yield self._answer_stats(question, history, pieces, usage, reason, started, first_at, dropped)

    def _answer_stats(self, question, history, pieces, usage, reason, started, first_at, dropped):
        now = time.perf_counter()
        first = first_at or now
        answer = "".join(pieces)
        new_tokens = int(usage.get("completion_tokens") or self._count(answer))
        prompt_tokens = usage.get("prompt_tokens")
        if not prompt_tokens:  # the server streams no usage: the load's count plus our count of the rest
            prompt_tokens = self.corpus_tokens + self._turns_tokens(question, history)
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        decode_s = now - first
        rate = (new_tokens - 1) / decode_s if new_tokens > 1 and decode_s > 0 else 0.0
        return RemoteAnswerStats(int(prompt_tokens), int(cached or 0), new_tokens, first - started, rate,
                                 reason, dropped,
                                 usage_from_server=bool(usage.get("prompt_tokens")),
                                 cached_from_server=cached is not None)

    def _turns_tokens(self, question: str, history) -> int:
        text = "".join(t.question + t.answer for t in history) + question
        return self._count(text) + 8 * (2 * len(history) + 1)

    def _fit_turns(self, question: str, history: list[Turn], max_new_tokens: int):
        """Drop the oldest turns until the prompt fits the window (when the server reports one)."""
        if not self.window:
            return history, 0

        def measure(kept):
            tokens = self._turns_tokens(question, kept)
            return tokens, tokens

        kept, dropped, _ = fit_turns(history, self.window - self.corpus_tokens, max_new_tokens, measure,
                                     f"the server's {self.window:,}-token window (by this machine's count)")
        return kept, dropped

    def load_corpus(self, corpus_ids, **options) -> LoadStats:
        """Token ids are not sent to a server: it is given the corpus's text (`load`)."""
        raise BackendError("a server is given a corpus as text; load it as documents")

    def prompt_prefix(self, corpus_ids, system_prompt: str | None = None) -> list[int]:
        """System prompt and corpus as this machine's tokenizer counts them (the server's may differ a little)."""
        system = self.system_prompt if system_prompt is None else system_prompt
        return encode_prompt(self.tokenizer, list(corpus_ids), "", system_prompt=system).prefix

    def save_corpus(self, label: str | None = None) -> None:
        """Nothing is saved on this machine: the server keeps its own prefix cache."""
        return None

    def fingerprint(self, kv_dtype: str) -> None:
        """A server's cache is not saved here."""
        return None

    def set_attention(self, attention: str) -> None:
        """The server chooses its own attention kernels."""
        raise BackendError("the server chooses its own attention precision")

    def drop_cache(self) -> None:
        """Forget the corpus (the server keeps its own cache until it needs the room)."""
        self.corpus_text, self.corpus_tokens = None, 0

    def close(self) -> None:
        self._client.close()
