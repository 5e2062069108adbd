"""Time to first token through the OpenAI-compatible API (app/server), cold corpus against cached corpus.

    .venv/bin/python bench/server_ttft.py [--tokens 5000] [--rounds 3]

Serves the CPU demo model with `app.server.serve.app` on a free localhost port (uvicorn, in this process) and
streams with the official `openai` client: the first request sends a ~N-token document with a question; the
next ones send the same document with other questions. The time is measured by the client, from sending the
request to its first content chunk. Each round uses a new document, so its first request is cold.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _document(tokenizer, tokens: int, round_: int) -> str:
    from pydoc_data.topics import topics

    text = f"Round {round_}. The secret launch code is PELICAN-{round_}.\n\n" + "\n\n".join(topics.values())
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:tokens]
    return tokenizer.decode(ids)


def _ttft(client, document: str, question: str) -> tuple[float, int, int]:
    started = time.perf_counter()
    first, usage = None, None
    for chunk in client.chat.completions.create(model="demo", max_tokens=8, stream=True,
                                                stream_options={"include_usage": True},
                                                messages=[{"role": "user", "content": f"{document}\n\n{question}"}]):
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - started
        usage = chunk.usage or usage
    return first, usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import openai
    import uvicorn

    from app.engine.engine import Engine
    from app.engine.models import load_model
    from app.server.access import KeyRule
    from app.server.serve import app

    model, tokenizer = load_model("demo")
    engine = Engine(model, tokenizer, model_name="demo")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app(engine, KeyRule(None)), host="127.0.0.1", port=port,
                                           log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=600)
    print("| round | request | prompt tokens | cached | time to first token |")
    print("| --- | --- | --- | --- | --- |")
    for round_ in range(1, args.rounds + 1):
        document = _document(tokenizer, args.tokens, round_)
        for n, question in enumerate(["What is the secret launch code?", "Which round is it?",
                                      "What is the code?"], 1):
            ttft, prompt, cached = _ttft(client, document, question)
            print(f"| {round_} | {n} | {prompt:,} | {cached:,} | {ttft:.3f} s |", flush=True)
    server.should_exit = True


if __name__ == "__main__":
    main()
