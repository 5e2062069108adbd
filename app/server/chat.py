"""OpenAI's chat-completions shapes: a request body checked into a `ChatRequest`, errors as `ApiError`,
and the response, chunk and usage objects."""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field

from app.protocol import JsonFormat

ROLES = ("system", "developer", "user", "assistant")


class ApiError(Exception):
    """An error in OpenAI's shape: HTTP status, message, type, and the parameter and code when there are ones."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    """A checked `POST /v1/chat/completions` body."""

    model: str
    system: str | None  # the leading system (or developer) messages, joined
    users: list[str]  # user messages; answers between them in `assistants`
    assistants: list[str]
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    json: JsonFormat | None = None  # response_format json_object / json_schema


def _text(content, where: str) -> str:
    """A message's text: a string, or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ApiError(400, f"{where}: only text content is supported, not '{kind}'", param="messages")
            parts.append(part["text"])
        return "".join(parts)
    raise ApiError(400, f"{where}: content must be a string or a list of text parts", param="messages")


def _shown(number: float) -> str:
    """A limit as a person reads it: integers whole, with thousands separators (2,147,483,648), others short."""
    return f"{int(number):,}" if float(number).is_integer() else f"{number:g}"


def _number(body: dict, name: str, low: float, high: float, default, integer: bool = False):
    value = body.get(name)
    if value is None:
        return default
    ok = isinstance(value, int) if integer else isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or isinstance(value, bool) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise ApiError(400, f"'{name}' must be {kind} from {_shown(low)} to {_shown(high)}, not {value!r}",
                       param=name)
    return value


# Parameters of OpenAI's chat API that Omnibus does not carry out, with the values that ask for nothing (a client
# library may send those). Any other value is refused with a 400 naming the parameter: answering as if it were
# obeyed would let an agent believe the model chose not to call a tool, or a parser expect what never comes.
UNSUPPORTED = {
    "tools": (([],), "tool calls are not supported"),
    "tool_choice": (("none", "auto"), "tool calls are not supported"),
    "functions": (([],), "function calls are not supported"),
    "function_call": (("none", "auto"), "function calls are not supported"),
    "logprobs": ((False,), "logprobs are not supported"),
    "top_logprobs": ((0,), "logprobs are not supported"),
    "logit_bias": (({},), "logit_bias is not supported"),
    "frequency_penalty": ((0,), "frequency_penalty is not supported (only 0)"),
    "presence_penalty": ((0,), "presence_penalty is not supported (only 0)"),
    "audio": (({},), "audio output is not supported"),
    "modalities": ((["text"],), "output other than text is not supported"),
    "prediction": (({},), "predicted outputs are not supported"),
    "web_search_options": (({},), "web search is not supported"),
    "reasoning_effort": ((), "this model does not reason in steps: reasoning_effort is not supported"),
}


def _refuse_unsupported(body: dict) -> None:
    for name, (harmless, why) in UNSUPPORTED.items():
        value = body.get(name)
        if value is not None and not any(value == h and isinstance(value, bool) == isinstance(h, bool) for h in harmless):
            raise ApiError(400, f"{why}; '{name}' asks for it ({json.dumps(value)[:80]})", param=name,
                           code="unsupported_parameter")


def _response_format(value) -> JsonFormat | None:
    """OpenAI's `response_format`: text (None), any JSON object, or JSON that matches a schema (checked here, so a
    schema the grammar cannot carry out is refused before any work)."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        fmt = JsonFormat()
    elif kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise ApiError(400, "response_format json_schema needs 'json_schema': {'name': ..., 'schema': {...}}",
                           param="response_format")
        fmt = JsonFormat(spec["schema"], str(spec.get("name") or "answer"))
    else:
        raise ApiError(400, f"response_format type must be text, json_object or json_schema, not {kind!r}",
                       param="response_format")
    from app.engine.grammar import SchemaError, grammar

    try:
        grammar(fmt)
    except SchemaError as err:
        raise ApiError(400, str(err), param="response_format") from err
    return fmt


def parse_chat_request(body) -> ChatRequest:
    """Check a request body; raises ApiError(400) naming the parameter that is wrong."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required: one of the ids GET /v1/models lists", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages")
    system, turns = [], []  # turns: [role, text], consecutive messages of one role merged
    for n, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            raise ApiError(400, f"messages[{n}]: role must be one of {', '.join(ROLES)}, not {role!r} "
                                "(tools are not supported)", param="messages")
        text = _text(message.get("content"), f"messages[{n}]")
        if role in ("system", "developer"):
            if turns:
                raise ApiError(400, f"messages[{n}]: system messages must come before the conversation",
                               param="messages")
            system.append(text)
        elif turns and turns[-1][0] == role:
            turns[-1][1] += "\n\n" + text
        else:
            turns.append([role, text])
    if not turns or turns[0][0] != "user" or turns[-1][0] != "user":
        raise ApiError(400, "the conversation must start and end with a user message", param="messages")
    _refuse_unsupported(body)
    if body.get("n", 1) != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
        raise ApiError(400, "'stop' must be a string or a list of at most 4 strings", param="stop")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    options = body.get("stream_options") or {}
    return ChatRequest(
        model=model, system="\n\n".join(system) if system else None,
        users=[t for role, t in turns if role == "user"], assistants=[t for role, t in turns if role == "assistant"],
        stream=bool(body.get("stream")), include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
        max_tokens=_number({name: max_tokens}, name, 1, 2**31, None, integer=True),
        temperature=float(_number(body, "temperature", 0, 2, 0.0)), top_p=float(_number(body, "top_p", 0, 1, 1.0)),
        stop=stop, seed=_number(body, "seed", -2**63, 2**63 - 1, None, integer=True),
        json=_response_format(body.get("response_format")))


def new_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def usage_object(usage) -> dict:
    """OpenAI's `usage` from an app.server.service.Usage."""
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens}}


def completion(ident: str, model: str, text: str, usage) -> dict:
    return {"id": ident, "object": "chat.completion", "created": int(time.time()), "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": usage.finish_reason}],
            "usage": usage_object(usage)}


def chunk(ident: str, model: str, delta: dict, finish_reason: str | None = None, usage=None) -> dict:
    """One streamed event; with `usage`, the final event that carries it (and no choices)."""
    choices = [] if usage is not None else [{"index": 0, "delta": delta, "logprobs": None,
                                             "finish_reason": finish_reason}]
    out = {"id": ident, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
           "system_fingerprint": None, "choices": choices}
    if usage is not None:
        out["usage"] = usage_object(usage)
    return out
