"""Words and tables the page shows: the document list, the context meter, progress and timing lines.

Plain functions from engine and ingest objects to strings and rows, written for someone who has never
heard of a token or a KV cache. No gradio here.
"""

from __future__ import annotations

from html import escape

from app.planner import fit_advice, format_seconds

DOCUMENT_HEADERS = ["#", "File", "Kind", "Pages", "Tokens"]
SKIPPED_HEADERS = ["File", "Why it was left out"]
KIND_NAMES = {"pdf": "PDF", "docx": "Word", "text": "text", "code": "code"}
TOKEN_HINT = "a token is about ¾ of a word"


def banner(backend) -> str:
    """Markdown naming the model; for the CPU demo model, how to run the real one."""
    if backend.model_name == "demo":
        return ("⚠️ **You are running the small demo model on the CPU** (SmolLM2-135M, reads at most "
                f"{backend.window:,} tokens, about 10 pages). It is here so you can try the app; its answers "
                "are simple. For the real model, run Omnibus on a computer with an NVIDIA GPU: "
                "`python3 launch.py --model ultralong-1m` (or leave `--model` out to pick the largest "
                "that fits).")
    where = "a remote server" if backend.name == "openai" else "this computer"
    return f"**Model:** {backend.model_name} on {where}, reads up to {backend.window:,} tokens at once."


def document_rows(corpus) -> list[list]:
    """One row per document: index, file, kind, pages, tokens."""
    if corpus is None:
        return []
    return [[d.index, d.source, KIND_NAMES.get(d.kind, d.kind), d.pages or "", f"{d.tokens:,}"]
            for d in corpus.documents]


def skipped_rows(corpus) -> list[list]:
    """One row per file left out, with the reason."""
    return [[s.source, s.reason] for s in corpus.skipped] if corpus is not None else []


def corpus_summary(corpus) -> str:
    if corpus is None or not corpus.documents:
        return "No documents yet. Drop files above."
    count = len(corpus.documents)
    left_out = f"; {len(corpus.skipped)} left out (see below)" if corpus.skipped else ""
    return f"**{count} document{'s' * (count != 1)}, {corpus.total_tokens:,} tokens**{left_out}"


def _memory_line(plan) -> str:
    names = {}
    for d in plan.devices:
        names[d.name] = names.get(d.name, 0) + 1
    hardware = ", ".join(f"{n}× {name}" if n > 1 else name for name, n in names.items())
    if hardware == "cpu":
        hardware = "this computer's memory (CPU)"
    return hardware


def context_meter(backend, plan, corpus_tokens: int | None = None) -> str:
    """HTML: the documents' tokens against the model window and what the hardware holds, and load time."""
    if plan is None:
        return ("<div class='meter'><b>Context meter.</b> Once you add documents, this shows how much of the "
                f"model's reading capacity they use ({TOKEN_HINT}).</div>")
    reserve = backend.reserve
    window_room = max(plan.window - reserve, 1)
    limit = max(min(plan.max_tokens, window_room), 1)
    share = plan.tokens / limit
    colour = "#2e7d32" if plan.fits and share < 0.8 else "#ef6c00" if plan.fits else "#c62828"
    bar = (f"<div class='meter-bar'><div style='width:{min(share, 1) * 100:.1f}%;background:{colour}'></div></div>")
    hardware = _memory_line(plan)
    memory = ("has room for the whole window" if plan.max_tokens >= window_room
              else f"has room for <b>{plan.max_tokens:,}</b> tokens ({plan.kv_dtype} cache)")
    used = f"<b>{plan.tokens:,}</b> tokens"
    if corpus_tokens is not None:
        used = (f"Your documents are <b>{corpus_tokens:,}</b> tokens; with the instructions to the model, "
                f"<b>{plan.tokens:,}</b>")
    lines = [
        f"{used}: {share:.0%} of what can be used ({TOKEN_HINT}).",
        f"The model reads up to <b>{plan.window:,}</b> tokens at once; {reserve:,} of them are kept for your "
        "questions and its answers.",
        f"Memory: {escape(hardware)} {memory}.",
    ]
    if plan.fits:
        lines.append(f"Loading will take about <b>{format_seconds(plan.prefill_seconds)}</b>, once; follow-up "
                     "questions reuse it.")
        verdict = ""
    else:
        verdict = (f"<div class='refusal'><b>This is too much to load.</b> {escape(plan.reason[:1].upper() + plan.reason[1:])}.<br>"
                   f"{escape(fit_advice(plan, reserve))}</div>")
    items = "".join(f"<li>{line}</li>" for line in lines)
    return f"<div class='meter'><b>Context meter</b>{bar}<ul>{items}</ul>{verdict}</div>"


def load_progress(p) -> str:
    """One line for a `PrefillProgress` report."""
    return (f"Reading the documents into the model: {p.done:,} of {p.total:,} tokens · "
            f"{p.tokens_per_s:,.0f} tokens/s · about {format_seconds(p.eta_s)} left")


def load_done(stats) -> str:
    """One line for `LoadStats`."""
    if stats.reused >= stats.tokens:
        return f"**Ready:** the documents ({stats.tokens:,} tokens) are loaded. Ask away."
    reused = f" ({stats.reused:,} were already loaded)" if stats.reused else ""
    return (f"**Ready:** loaded {stats.tokens - stats.reused:,} tokens in {format_seconds(stats.seconds)} "
            f"({stats.tokens_per_s:,.0f} tokens/s){reused}. Ask away.")


def answer_line(stats) -> str:
    """How the last answer went: time to first token, speed, why it ended."""
    if stats is None:
        return ""
    parts = [f"First word after **{stats.ttft_s:.2f} s**",
             f"{stats.new_tokens} tokens at {stats.tokens_per_s:.1f} tokens/s",
             f"the documents were reused from memory ({stats.cached_tokens:,} tokens, not read again)"]
    if stats.finish_reason == "length":
        parts.append("cut off at the answer-length limit (raise it in Settings)")
    elif stats.finish_reason == "cancelled":
        parts.append("stopped by you")
    if stats.dropped_turns:
        parts.append(f"the {stats.dropped_turns} oldest exchange(s) no longer fit and were left out")
    return " · ".join(parts)


CITE_MARKS = {"verified": "✓", "near": "≈", "not found": "✗", "no quote": "·"}
CITE_WORDS = {"verified": "quote found", "near": "close match only", "not found": "quote not found",
              "no quote": "no quote to check"}


def _cite_class(status: str) -> str:
    return "cite-" + status.replace(" ", "-")


def _cite_place(check) -> str:
    """`report.pdf · p. 4`: the cited file's name and the page(s) or lines the citation names."""
    c = check.citation
    name = (check.source or c.source or f"document {c.index}").rstrip("/").rsplit("/", 1)[-1]
    span, word = (c.pages, ("p.", "pp.")) if c.pages else (c.lines, ("line", "lines")) if c.lines else (None, None)
    if span is None:
        return name
    return f"{name} · {word[0]} {span[0]}" if span[0] == span[1] else f"{name} · {word[1]} {span[0]}-{span[1]}"


def citation_chips(checks) -> str:
    """HTML: one button per citation of the answer (`data-cite` = its position), marked by how it checked out."""
    if checks is None:
        return ""
    if not checks:
        return "<div class='citations'><span class='cite-none'>No citations in this answer.</span></div>"
    found = sum(c.status == "verified" for c in checks)
    chips = []
    for n, check in enumerate(checks):
        tip = f"{CITE_WORDS.get(check.status, check.status)}" + (f": {check.note}" if check.note else "")
        chips.append(f"<button class='cite {_cite_class(check.status)}' data-cite='{n}' title='{escape(tip)}'>"
                     f"{CITE_MARKS.get(check.status, '?')} {escape(_cite_place(check))}</button>")
    return (f"<div class='citations'><span class='cite-label'>Sources ({found} of {len(checks)} quotes found; "
            f"click to see the page):</span> {''.join(chips)}</div>")


def cited_passage(check, passage) -> str:
    """HTML: the cited page(s) or lines as text, the quote marked, with how the quote checked out."""
    if check is None:
        return ""
    status = CITE_WORDS.get(check.status, check.status)
    how = f" ({check.how}{f', {check.score:.0%}' if check.how == 'fuzzy' else ''})" if check.how else ""
    note = f" · {escape(check.note)}" if check.note else ""
    quote = f"<div class='passage-quote'>Quoted: “{escape(check.citation.quote)}”</div>" if check.citation.quote else ""
    head = (f"<div class='passage-head'><b>{escape(passage.title if passage else _cite_place(check))}</b> · "
            f"<span class='cite {_cite_class(check.status)}'>{CITE_MARKS.get(check.status, '?')} {status}{how}</span>"
            f"{note}</div>{quote}")
    if passage is None:
        return f"<div class='passage'>{head}</div>"
    lines, at = [], 0
    for number, line in enumerate(passage.text.split("\n")):
        end = at + len(line)
        cuts = sorted({at, end, *(x for a, b in passage.highlights for x in (a, b) if at < x < end)})
        pieces = []
        for lo, hi in zip(cuts, cuts[1:]):
            text = escape(passage.text[lo:hi])
            marked = any(a <= lo and hi <= b for a, b in passage.highlights)
            pieces.append(f"<mark>{text}</mark>" if marked else text)
        gutter = f"<span class='ln'>{passage.first_line + number:>5} </span>" if passage.first_line else ""
        lines.append(gutter + "".join(pieces))
        at = end + 1
    return f"<div class='passage'>{head}<pre class='passage-text'>{chr(10).join(lines)}</pre></div>"


SAVED_HEADERS = ["Saved corpus", "Documents", "Tokens", "Size on disk", "Last used"]


def saved_rows(entries) -> list[list]:
    """Table rows for the corpora saved on disk."""
    import time

    return [[e.name or e.id[:8], e.documents, f"{e.tokens:,}", f"{e.bytes / 1e9:,.2f} GB",
             time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used)) if e.last_used else ""] for e in entries]


def saved_choices(entries) -> list[tuple[str, str]]:
    """(label, id) pairs for the remove menu."""
    return [(f"{e.name or e.id[:8]} ({e.tokens:,} tokens)", e.id) for e in entries]


SAVED_NOTE = ("Documents you have loaded before are saved on disk after loading. Loading the same documents again "
              "(even after a restart) reopens them from here in seconds instead of reading them again.")
