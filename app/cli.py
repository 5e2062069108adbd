"""Command line: `ask` (ingest, prefill once, answer each question), `plan` (will it fit, how long) and
`cache` (the corpora saved on disk: list, rm, prune)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from app import planner
from app.backend import add_backend_arguments
from app.errors import OmnibusError


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _progress_printer():
    last = [0.0]

    def show(p) -> None:
        now = time.monotonic()
        if now - last[0] >= 1.0 or p.done == p.total:
            last[0] = now
            _say(f"prefill {p.done:,}/{p.total:,} tokens  {p.tokens_per_s:,.0f} tokens/s  "
                 f"{planner.format_seconds(p.eta_s)} left")

    return show


def ask(args) -> int:
    from app.backend import open_from_arguments
    from app.protocol import AnswerStats, Settings
    from app.citations.check import Verifier, parse
    from app.prompt import Turn, system_prompt
    from ingest import build_corpus

    backend = open_from_arguments(args)
    corpus = build_corpus(args.paths, tokenizer=backend.tokenizer, line_numbers=args.line_numbers)
    for skipped in corpus.skipped:
        _say(f"skipped {skipped.source}: {skipped.reason}")
    if backend.name != "local":  # the whole corpus goes to the server: name the files that look like secrets
        from ingest.secret_scan import scan_corpus, summary

        for line in summary(scan_corpus(corpus), limit=100):
            _say(f"warning: likely secret, will be sent to {backend.base_url}: {line}")
    _say(f"corpus: {len(corpus.documents)} documents, {corpus.total_tokens:,} tokens; model {backend.model_name}")
    layout = backend.plan(corpus.total_tokens)
    _say("plan: " + layout.summary())
    system = None if args.citation_prompt else system_prompt(citations=False)
    stats = backend.load(corpus, system_prompt=system, progress=_progress_printer())
    _report_load(stats)
    verifier = Verifier(corpus) if args.citations else None
    settings = Settings(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    history: list[Turn] = []
    for question in args.question:
        print(f"\n## {question}\n", flush=True)
        answer = []
        for piece in backend.ask(question, history if args.chat else (), settings):
            if isinstance(piece, AnswerStats):
                _say(f"[{piece.prompt_tokens:,} prompt tokens, {piece.cached_tokens:,} cached; "
                     f"time to first token {piece.ttft_s:.3f} s; {piece.new_tokens} tokens at "
                     f"{piece.tokens_per_s:.1f} tokens/s; {piece.finish_reason}]")
            else:
                answer.append(piece)
                print(piece, end="", flush=True)
        print(flush=True)
        if verifier is not None:
            print(citation_list(verifier.check_all(parse("".join(answer)))), flush=True)
        history.append(Turn(question, "".join(answer)))
    return 0


def citation_list(checks) -> str:
    """The `--citations` block: one line per citation, what it cites and whether its quote was found."""
    marks = {"verified": "✓", "near": "≈", "not found": "✗", "no quote": "·"}
    lines = [f"\nCitations ({sum(c.status == 'verified' for c in checks)} of {len(checks)} verified):"
             if checks else "\nCitations: none"]
    for n, check in enumerate(checks, start=1):
        how = f" ({check.how}{f', {check.score:.0%}' if check.how == 'fuzzy' else ''})" if check.how else ""
        where = f" ({check.source})" if check.source else ""
        quote = check.citation.quote
        quote = f' "{quote[:70]}{"…" * (len(quote) > 70)}"' if quote else ""
        note = f"; {check.note}" if check.note else ""
        lines.append(f"  {n}. {marks.get(check.status, '?')} {check.citation.where}{where}{quote}: "
                     f"{check.status}{how}{note}")
    return "\n".join(lines)


def _report_load(stats) -> None:
    """Where the corpus came from (disk cache, memory, prefill), how long each part took, and the save."""
    source = getattr(stats, "source", "prefill")
    if "disk" in source:
        _say(f"disk cache: {stats.reused:,} tokens loaded in {stats.disk_seconds:.2f} s")
    where = "the disk cache" if "disk" in source else "memory"
    _say(f"prefill: {stats.tokens - stats.reused:,} new tokens in {stats.seconds:.2f} s "
         f"({stats.reused:,} of {stats.tokens:,} from {where})")
    saved = getattr(stats, "saved", None)
    if saved is not None and saved.status != "exists":
        _say(("" if saved.ok else "warning: ") + saved.message)


def cache(args) -> int:
    from app.store.library import Store

    store = Store(args.cache_dir)
    if args.action == "rm":
        for ident in args.ids:
            entry = store.remove(ident)
            _say(f"removed {entry.id[:12]} {entry.name} ({entry.bytes / 1e9:,.2f} GB)")
        return 0
    if args.action == "prune":
        removed = store.prune(int(args.max_gb * 1e9))
        for entry in removed:
            _say(f"removed {entry.id[:12]} {entry.name} ({entry.bytes / 1e9:,.2f} GB)")
        _say(f"{len(removed)} removed; {store.total_bytes() / 1e9:,.2f} GB left in {store.root}")
        return 0
    entries = store.entries()
    if args.json:
        print(json.dumps([e.to_json() for e in entries], indent=2))
        return 0
    print(f"{'ID':<12}  {'DOCS':>5}  {'TOKENS':>11}  {'SIZE':>9}  {'LAST USED':<16}  {'MODEL':<14} {'KV':<4}  NAME")
    for e in entries:
        fp = e.meta.get("fingerprint", {})
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
        name = e.name + (" (checkpoint)" if e.kind == "checkpoint" else "")
        print(f"{e.id[:12]:<12}  {e.documents:>5,}  {e.tokens:>11,}  {e.bytes / 1e9:>6,.2f} GB  {used:<16}  "
              f"{str(fp.get('model', ''))[:14]:<14} {str(fp.get('kv_dtype', '')):<4}  {name}")
    print(f"{len(entries)} saved corpora, {sum(e.bytes for e in entries) / 1e9:,.2f} GB in {store.root}")
    return 0


def plan(args) -> int:
    from app.engine.models import llama31_8b_config, resolve

    devices = planner.parse_gpus(args.gpus) if args.gpus else planner.local_devices()
    windows = {"ultralong-1m": 1_048_576, "ultralong-2m": 2_097_152, "ultralong-4m": 4_194_304}
    if args.model in windows or args.model == "auto":
        config = llama31_8b_config(windows.get(args.model, 4_194_304))
    else:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(resolve(args.model).source)
    shape = planner.ModelShape.from_config(config)
    result = planner.plan(shape, args.tokens, devices, args.kv_dtype, args.weight_dtype, mode=args.parallel)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(result.summary())
        for d in result.devices:
            print(f"  {d.name}: {d.layers} layers, weights {d.weights_gib:.1f} GiB, KV {d.kv_gib:.1f} GiB, "
                  f"workspace {d.workspace_gib:.1f} GiB, free {d.free_gib:.1f} GiB")
        if result.reason:
            print("  " + result.reason)
    return 0 if result.fits else 1


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:  # the API and MCP server has its own options (app/server/serve.py)
        from app.server.serve import main as serve_main

        return serve_main(argv[1:])
    parser = argparse.ArgumentParser(prog="launch.py", description="Omnibus command line")
    commands = parser.add_subparsers(dest="command", required=True)
    p_ask = commands.add_parser("ask", help="ingest files, prefill once, answer each question")
    p_ask.add_argument("paths", nargs="+")
    p_ask.add_argument("-q", "--question", action="append", required=True)
    p_ask.add_argument("--max-new-tokens", type=int, default=512)
    p_ask.add_argument("--temperature", type=float, default=0.0)
    p_ask.add_argument("--chat", action="store_true", help="keep earlier questions and answers as context")
    p_ask.add_argument("--line-numbers", action="store_true", help="number the lines of code files")
    p_ask.add_argument("--citations", action="store_true",
                       help="after each answer, list its citations and whether each quote is in the cited place")
    p_ask.add_argument("--no-citation-prompt", dest="citation_prompt", action="store_false",
                       help="do not ask the model to cite quotes in the [N, p. P: \"words\"] form")
    add_backend_arguments(p_ask)
    p_plan = commands.add_parser("plan", help="will N tokens fit, and how long will the prefill take")
    p_plan.add_argument("--tokens", type=int, required=True)
    p_plan.add_argument("--gpus", help="e.g. 4x80 for four 80 GiB GPUs (default: the GPUs of this machine)")
    p_plan.add_argument("--kv-dtype", default="auto", choices=["auto", "bf16", "fp8"])
    p_plan.add_argument("--weight-dtype", default="bf16", choices=["bf16", "fp8"])
    p_plan.add_argument("--model", default="ultralong-4m")
    p_plan.add_argument("--parallel", default="sequence", choices=["sequence", "layers"],
                        help="several GPUs: split every layer's KV by position (attention on all GPUs at once) "
                             "or split the layers (one GPU busy at a time)")
    p_plan.add_argument("--json", action="store_true")
    p_cache = commands.add_parser("cache", help="corpora saved on disk: list, rm ID, prune --max-gb N")
    actions = p_cache.add_subparsers(dest="action", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache-dir", help="the folder (default: $XDG_CACHE_HOME/omnibus or ~/.cache/omnibus)")
    actions.add_parser("list", parents=[common], help="saved corpora, most recently used first") \
        .add_argument("--json", action="store_true")
    actions.add_parser("rm", parents=[common], help="remove saved corpora by id (or a unique start of one)") \
        .add_argument("ids", nargs="+")
    actions.add_parser("prune", parents=[common], help="remove the least recently used until the rest fit") \
        .add_argument("--max-gb", type=float, required=True)
    args = parser.parse_args(argv)
    try:
        return {"ask": ask, "plan": plan, "cache": cache}[args.command](args)
    except OmnibusError as err:
        _say(f"error: {err}")
        return 1
