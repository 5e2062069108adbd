"""The `omnibus` command (and `python3 launch.py`): the app, and `ingest`, `ask`, `plan`, `cache`, `pull`, `models`.

`main` only looks at the first argument before it imports anything heavy, so `omnibus --help` and `--version` answer
at once (and `python3 launch.py --help` before anything is installed). `--log-level` works with every command.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

from app import logs, planner
from app.errors import OmnibusError
from app.settings import ATTENTIONS, KV_DTYPES, PARALLEL, WEIGHT_DTYPES, add_arguments, read_settings

COMMANDS = ("ui", "ingest", "ask", "plan", "cache", "pull", "models", "serve", "mcp")


def usage(prog: str = "omnibus") -> str:
    """The top-level help: every command, one line each."""
    return f"""usage: {prog} [COMMAND] [OPTIONS]   (Omnibus {version()})

Ask questions over whole books, document collections and codebases: every file becomes one context.

commands:
  {prog} [ui] [--port N] [--model M] ...   start the app at http://127.0.0.1:7860 (the default command)
  {prog} ingest PATH... [--out FILE]       turn files into one context and count its tokens exactly
  {prog} ask PATH... -q QUESTION           answer questions from the command line
  {prog} plan --tokens N [--gpus 4x80]     will N tokens fit, and how long will the prefill take
  {prog} cache list|rm ID|prune            the corpora saved on disk
  {prog} pull MODEL                        download a model ahead of time (checks the free disk first)
  {prog} models                            the models Omnibus knows: size, window, licence, on disk or not
  {prog} serve [--port 8000]               the OpenAI-compatible API and MCP over the cached corpus, no page
  {prog} mcp [--model M]                   the MCP tools over stdin/stdout, for an MCP host to start
{"  " + prog + " test [PYTEST ARGS]                 run the tests" + chr(10) if prog == "launch.py" else ""}
options for every command:
  --log-level debug|info|warning|error   what goes to stderr, one line per event (default: $OMNIBUS_LOG_LEVEL,
                                         then info)
  --version                              print the version
  -h, --help                             this text; `{prog} COMMAND --help` for a command's options"""


def version() -> str:
    """This checkout's version (pyproject.toml beside the code), else the installed package's."""
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if pyproject.exists():
        found = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(encoding="utf-8"), re.M)
        if found:
            return found.group(1)
    from importlib.metadata import PackageNotFoundError, version as installed

    try:
        return installed("omnibus")
    except PackageNotFoundError:
        return "unknown"


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
    from app import model_download
    from app.backend import open_backend
    from app.protocol import AnswerStats, Settings
    from app.citations.check import Verifier, parse
    from app.prompt import Turn, json_question, system_prompt
    from ingest import build_corpus

    json_format = read_json_schema(args.json_schema) if args.json_schema else None  # refused before any work
    backend = open_backend(args.settings, download_progress=model_download.download_printer())
    corpus = build_corpus(args.paths, tokenizer=backend.tokenizer, line_numbers=args.line_numbers,
                          max_tokens=backend.window or None)
    for skipped in corpus.skipped:
        _say(f"skipped {skipped.source}: {skipped.reason}")
    if backend.name != "local":  # the whole corpus goes to the server: name the files that look like secrets
        from ingest.secret_scan import scan_corpus, summary

        for line in summary(scan_corpus(corpus), limit=100):
            _say(f"warning: likely secret, will be sent to {backend.base_url}: {line}")
    _say(f"corpus: {len(corpus.documents)} documents, {corpus.total_tokens:,} tokens; model {backend.model_name}")
    plan = backend.plan(corpus.total_tokens)
    _say("plan: " + plan.summary())
    system = None if args.citation_prompt else system_prompt(citations=False)
    stats = backend.load(corpus, system_prompt=system, progress=_progress_printer())
    _report_load(stats)
    verifier = Verifier(corpus) if args.citations else None
    settings = Settings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, json=json_format)
    history: list[Turn] = []
    for question in args.question:
        if json_format is None:
            print(f"\n## {question}\n", flush=True)
        answer = []
        asked = question if json_format is None else json_question(question, json_format)
        for piece in backend.ask(asked, history if args.chat else (), settings):
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


def read_json_schema(path: str):
    """`ask --json-schema FILE`: the schema every answer is decoded under (JsonFormat); OmnibusError if unusable."""
    from app.engine.grammar import grammar
    from app.protocol import JsonFormat

    try:
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise OmnibusError(f"cannot read the JSON schema {path}: {err.strerror or err}") from err
    except ValueError as err:
        raise OmnibusError(f"{path} is not valid JSON: {err}") from err
    fmt = JsonFormat(schema, Path(path).stem) if isinstance(schema, dict) else JsonFormat(schema)
    grammar(fmt)  # SchemaError (an OmnibusError) names what cannot be used
    return fmt


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
    source = stats.source
    if "disk" in source:
        _say(f"disk cache: {stats.reused:,} tokens loaded in {stats.disk_seconds:.2f} s")
    where = "the disk cache" if "disk" in source else "memory"
    _say(f"prefill: {stats.tokens - stats.reused:,} new tokens in {stats.seconds:.2f} s "
         f"({stats.reused:,} of {stats.tokens:,} from {where})")
    saved = stats.saved
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


def gigabytes(text: str) -> float:
    """An argparse type: a size in GB, a finite number >= 0 (`nan`, `inf` and negatives are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size in GB such as 200, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a size in GB of 0 or more, got {text!r}")
    return value


def pull(args) -> int:
    from app import model_download

    for name in args.models:
        located = model_download.locate(name, progress=model_download.download_printer())
        _say(f"{name}: on disk at {located.folder}")
    return 0


def models(args) -> int:
    from app import model_hub

    cards = model_hub.catalogue(args.extra)
    if args.json:
        print(json.dumps([c.__dict__ for c in cards], indent=2))
        return 0
    rows = [model_hub.CARD_HEADERS] + [[str(v) for v in c.row()] for c in cards]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    print(f"Hugging Face cache: {model_hub.hub_cache()}" + ("  (HF_HUB_OFFLINE is set)" if model_hub.offline() else ""))
    return 0


def plan(args) -> int:
    from app.engine.models import llama31_8b_config
    from app.models_catalog import ULTRALONG_NAMES, resolve

    devices = planner.parse_gpus(args.gpus) if args.gpus else planner.local_devices()
    spec = resolve(ULTRALONG_NAMES[-1] if args.model == "auto" else args.model)
    if spec.name in ULTRALONG_NAMES:
        config = llama31_8b_config(spec.window)
    else:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(spec.source)
    shape = planner.ModelShape.from_config(config)
    from app.backend import fit_weights

    weight_dtype, why = fit_weights(spec.name, devices) if args.weight_dtype == "auto" else (args.weight_dtype, "")
    kv = "fp8" if args.attention == "fp8" and args.kv_dtype == "auto" else args.kv_dtype
    kernel = "default" if devices[0].name == "cpu" else "fa3-fp8" if args.attention == "fp8" else "fa3"
    result = planner.plan(shape, args.tokens, devices, kv, weight_dtype, mode=args.parallel, attention_kernel=kernel)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(result.summary())
        print(f"  largest corpus on {'this GPU' if len(devices) == 1 else f'these {len(devices)} GPUs'}: "
              f"{result.max_tokens:,} tokens ({result.weight_dtype} weights, {result.kv_dtype} KV)"
              if devices[0].name != "cpu" else f"  largest corpus here: {result.max_tokens:,} tokens")
        if why:
            print("  " + why)
        for d in result.devices:
            print(f"  {d.name}: {d.layers} layers, weights {d.weights_gib:.1f} GiB, KV {d.kv_gib:.1f} GiB, "
                  f"workspace {d.workspace_gib:.1f} GiB, free {d.free_gib:.1f} GiB")
        if result.reason:
            print("  " + result.reason)
    return 0 if result.fits else 1


def run_command(argv: list[str], prog: str = "omnibus") -> int:
    """`ask`, `plan`, `cache`, `pull` and `models`, parsed with argparse."""
    parser = argparse.ArgumentParser(prog=prog, description="Omnibus command line")
    commands = parser.add_subparsers(dest="command", required=True)
    p_ask = commands.add_parser("ask", help="ingest files, prefill once, answer each question")
    p_ask.add_argument("paths", nargs="+")
    p_ask.add_argument("-q", "--question", action="append", required=True)
    p_ask.add_argument("--max-new-tokens", type=int, default=512)
    p_ask.add_argument("--temperature", type=float, default=0.0)
    p_ask.add_argument("--chat", action="store_true", help="keep earlier questions and answers as context")
    p_ask.add_argument("--json-schema", metavar="FILE",
                       help="answer in JSON that matches this JSON schema (constrained decoding): one answer a line")
    p_ask.add_argument("--line-numbers", action="store_true", help="number the lines of code files")
    p_ask.add_argument("--citations", action="store_true",
                       help="after each answer, list its citations and whether each quote is in the cited place")
    p_ask.add_argument("--no-citation-prompt", dest="citation_prompt", action="store_false",
                       help="do not ask the model to cite quotes in the [N, p. P: \"words\"] form")
    add_arguments(p_ask)
    p_plan = commands.add_parser("plan", help="will N tokens fit, and how long will the prefill take")
    p_plan.add_argument("--tokens", type=int, required=True)
    p_plan.add_argument("--gpus", help="e.g. 4x80 for four 80 GiB GPUs (default: the GPUs of this machine)")
    p_plan.add_argument("--kv-dtype", default="auto", choices=[d for d in KV_DTYPES if d != "fp32"])
    p_plan.add_argument("--weight-dtype", default="auto", choices=WEIGHT_DTYPES,
                        help="auto: bf16 unless only fp8 weights let the model's window fit")
    p_plan.add_argument("--attention", default="bf16", choices=ATTENTIONS,
                        help="the attention the time estimate assumes (fp8: FlashAttention-3 fp8, fp8 KV)")
    p_plan.add_argument("--model", default="ultralong-4m")
    p_plan.add_argument("--parallel", default="sequence", choices=PARALLEL,
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
        .add_argument("--max-gb", type=gigabytes, required=True)
    p_pull = commands.add_parser("pull", help="download models ahead of time into the Hugging Face cache")
    p_pull.add_argument("models", nargs="+", metavar="MODEL",
                        help="ultralong-1m|2m|4m, demo, or any Hugging Face id (owner/name)")
    p_models = commands.add_parser("models", help="the models Omnibus knows: size, window, licence, on disk")
    p_models.add_argument("extra", nargs="*", metavar="MODEL", help="also show these Hugging Face ids or folders")
    p_models.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "ask":
        args.settings = read_settings(p_ask, args)  # checked once, here; a bad value ends as argparse's errors do
    try:
        return {"ask": ask, "plan": plan, "cache": cache, "pull": pull, "models": models}[args.command](args)
    except OmnibusError as err:
        _say(f"error: {err}")
        return 1


def main(argv: list[str] | None = None, prog: str = "omnibus") -> int:
    """The `omnibus` command: `--version` and `--help` at once; `--log-level` anywhere; then the command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"], ["help"]):
        print(usage(prog))
        return 0
    if argv[:1] in (["--version"], ["-V"]):
        print(f"omnibus {version()}")
        return 0
    try:
        level, argv = logs.split_level(argv)
        logs.configure(level)
    except ValueError as err:
        _say(f"error: {err}")
        return 2
    command, rest = (argv[0], argv[1:]) if argv and argv[0] in COMMANDS else ("ui", argv)
    if command == "ui" and rest and not rest[0].startswith("-"):
        _say(f"error: unknown command {rest[0]!r}\n\n" + usage(prog))
        return 2
    if command == "ui":
        from app.server import serve  # the API and MCP, mounted beside the page
        from app.ui.app import main as ui_main

        return ui_main(rest, api=serve)
    if command == "ingest":
        from ingest.cli import main as ingest_main

        return ingest_main(rest)
    if command == "serve":  # the API and MCP server, without the page, has its own options (app/server/serve.py)
        from app.server.serve import main as serve_main

        return serve_main(rest)
    if command == "mcp":  # MCP over stdio: stdout is the protocol's alone (app/server/mcp_stdio.py)
        from app.server.mcp_stdio import main as mcp_main

        return mcp_main(rest)
    return run_command([command, *rest], prog)


if __name__ == "__main__":
    sys.exit(main())
