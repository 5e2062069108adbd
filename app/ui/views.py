"""Words and tables the page shows: the document list, the context meter, progress and timing lines.

Plain functions from engine and ingest objects to strings and rows, written for someone who has never
heard of a token or a KV cache. No gradio here.
"""

from __future__ import annotations

import re
import time
from html import escape

from app.citations.form import CITATION_FORMAT
from app.planner import fit_advice, format_range, format_seconds
from app.prompt import default_system_prompt

DOCUMENT_HEADERS = ["#", "File", "Kind", "Pages", "Tokens"]
SKIPPED_HEADERS = ["File", "Why it was left out"]
KIND_NAMES = {"pdf": "PDF", "docx": "Word", "text": "text", "code": "code"}
TOKEN_HINT = "a token is about ¾ of a word"
DEMO_MARK = "demo model — answers are unreliable"
# Files the readers leave out as binary, and what to do instead.
WAY_OUT = {("xlsx", "xls", "xlsm", "ods", "numbers"): "spreadsheets are not read; save it as CSV and add that",
           ("pptx", "ppt", "odp", "key"): "presentations are not read; save it as PDF and add that",
           ("doc", "odt", "rtf", "pages"): "only .docx Word files are read; save it as .docx or PDF and add that"}


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
    """One row per file left out, with the reason (and a way out for spreadsheets and such)."""
    return [[s.source, _reason(s)] for s in corpus.skipped] if corpus is not None else []


def _reason(skipped) -> str:
    extension = skipped.source.rpartition(".")[2].lower() if "." in skipped.source else ""
    if skipped.reason.startswith("binary file"):
        for extensions, advice in WAY_OUT.items():
            if extension in extensions:
                return advice
    return skipped.reason


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


def context_meter(backend, plan, corpus_tokens: int | None = None, *, cost=None, loaded: bool = False,
                  refusal: str = "") -> str:
    """HTML: the documents' tokens against the model window and what the hardware holds, and load time.

    `cost` (the engine's `LoadCost`) gives the load time of what is not cached yet; `loaded`: nothing is left
    to read; `refusal`: why documents that do not fit cannot be loaded, and what to remove (the one place the
    page says it)."""
    if plan is None:
        return ("<div class='meter'><b>Context meter.</b> Once you add documents, this shows how much of the "
                f"model's reading capacity they use ({TOKEN_HINT}).</div>")
    reserve = backend.reserve
    window_room = max(plan.window - reserve, 1)
    limit = max(min(plan.max_tokens, window_room), 1)
    total = cost.tokens if cost is not None else plan.tokens  # the engine's exact count of what it will hold
    share = total / limit
    colour = "#2e7d32" if plan.fits and share < 0.8 else "#ef6c00" if plan.fits else "#c62828"
    bar = (f"<div class='meter-bar'><div style='width:{min(share, 1) * 100:.1f}%;background:{colour}'></div></div>")
    hardware = _memory_line(plan)
    memory = ("has room for the whole window" if plan.max_tokens >= window_room
              else f"has room for <b>{plan.max_tokens:,}</b> tokens ({plan.kv_dtype} cache)")
    used = f"<b>{total:,}</b> tokens"
    if corpus_tokens is not None:
        used = (f"Your documents are <b>{corpus_tokens:,}</b> tokens; with the instructions to the model, "
                f"<b>{total:,}</b>")
    lines = [
        f"{used}: {share:.0%} of what can be used ({TOKEN_HINT}).",
        f"The model reads up to <b>{plan.window:,}</b> tokens at once; {reserve:,} of them are kept for your "
        "questions and its answers.",
        f"Memory: {escape(hardware)} {memory}.",
    ]
    if plan.fits and loaded:
        lines.append("Loaded: follow-up questions reuse it.")
        verdict = ""
    elif plan.fits and cost is not None and not cost.to_read:
        lines.append("Loading takes a moment: the model holds these documents already"
                     + (" (from the disk cache)." if cost.from_disk else "."))
        verdict = ""
    elif plan.fits:
        lines.append(f"Loading will take {estimate_words(plan, cost, html=True)}, once; "
                     "follow-up questions reuse it.")
        verdict = ""
    else:
        why = refusal or f"{plan.reason}. {fit_advice(plan, reserve)}"
        verdict = (f"<div class='refusal' id='refusal'><b>This is too much to load</b> (Load and Ask stay off until it "
                   f"fits). {_code(escape(why[:1].upper() + why[1:]))}.</div>")
    items = "".join(f"<li>{line}</li>" for line in lines)
    return f"<div class='meter'><b>Context meter</b>{bar}<ul>{items}</ul>{verdict}</div>"


def as_typed(text: str) -> str:
    """Markdown that shows `text` exactly as typed: every ASCII punctuation mark escaped (so `__init__.py` is not
    bold and `<b>` is not a tag), and each line break kept."""
    escaped = re.sub(r"([!-/:-@\[-`{-~])", r"\\\1", text)
    return escaped.replace("\n", "  \n")


def _code(html: str) -> str:
    """`--model x` in escaped text as <code>--model x</code>: Markdown's inline code, rendered."""
    return re.sub(r"`([^`<>]+)`", r"<code>\1</code>", html)


def load_estimate(plan, cost=None) -> float:
    """The one load-time estimate the page shows: the engine's calibrated cost of what is not cached yet."""
    return cost.estimated_s if cost is not None else plan.prefill_seconds


def estimate_words(plan, cost=None, html: bool = False) -> str:
    """`about 1.2 min`, or `about 1.2 min (50 s to 2.1 min: this computer's speed varies)` when the recent
    measurements of this machine's speed disagree (a busy computer)."""
    seconds = load_estimate(plan, cost)
    span = cost.range_s if cost is not None else plan.prefill_range_s
    bold = (lambda t: f"<b>{t}</b>") if html else (lambda t: f"**{t}**")
    words = f"about {bold(format_seconds(seconds))}"
    if span and seconds:
        words += f" ({format_range(*span)}: this computer's speed varies)"
    return words


def _bar(share: float, width: int = 20) -> str:
    filled = round(max(0.0, min(share, 1.0)) * width)
    return "█" * filled + "░" * (width - filled)


def load_starting(total: int, reused: int, estimate: str) -> str:
    """The progress line shown the moment a load starts, before the engine's first report (`estimate`: the
    words of `estimate_words`)."""
    return (f"`{_bar(reused / max(total, 1))}` Reading the documents into the model: {reused:,} of {total:,} tokens · "
            f"{estimate} left")


def load_progress(p) -> str:
    """One line for a `PrefillProgress` report: the engine's one estimate of the time left."""
    speed = f" · {p.tokens_per_s:,.0f} tokens/s" if p.tokens_per_s else ""
    return (f"`{_bar(p.done / max(p.total, 1))}` Reading the documents into the model: {p.done:,} of "
            f"{p.total:,} tokens ({p.done / max(p.total, 1):.0%}){speed} · about **{format_seconds(p.eta_s)}** left")


def load_done(stats) -> str:
    """One line for `LoadStats`."""
    late = " (Cancel came after it had finished.)" if getattr(stats, "stop_requested", False) else ""
    if stats.reused >= stats.tokens:
        return f"**Ready:** the documents ({stats.tokens:,} tokens) are loaded. Ask away.{late}"
    reused = f" ({stats.reused:,} were already loaded)" if stats.reused else ""
    estimated = getattr(stats, "estimated_s", 0.0)
    guess = f"; estimated {format_seconds(estimated)}" if estimated else ""
    return (f"**Ready:** loaded {stats.tokens - stats.reused:,} tokens in {format_seconds(stats.seconds)} "
            f"({stats.tokens_per_s:,.0f} tokens/s{guess}){reused}. Ask away.{late}")


def load_stopped(err) -> str:
    """What a cancelled load did: where it stopped, and that loading again resumes there."""
    done, total = getattr(err, "done", None), getattr(err, "total", None)
    if done is not None and total is not None:
        return f"**Loading stopped** at {done:,} of {total:,} tokens; loading again resumes there."
    text = str(err).replace("prefill stopped", "stopped")
    return f"**Loading stopped:** {text}."


def load_finished_first(stats) -> str:
    return (f"**Ready:** loading finished before it could stop ({stats.tokens:,} tokens are loaded). "
            "Ask away.")


def instructions_warning(cost, tokens: int, estimate: str) -> str:
    """Said as soon as the instructions change on a loaded corpus: the next load reads the documents again
    (`estimate`: the words of `estimate_words`)."""
    if cost is not None and not getattr(cost, "documents_reread", True):
        return ""
    to_read = getattr(cost, "to_read", tokens) if cost is not None else tokens
    return (f"**The instructions changed:** the documents will be read again ({to_read:,} tokens, "
            f"{estimate}) at the next load or question. Change them back to keep the loaded copy.")


FINISH_WORDS = {"cancelled": "stopped by you",
                "length": "cut off at the answer-length limit (raise it in Settings)",
                "repetition": "stopped: the model was repeating itself",
                "full": "stopped: the model's window is full (Clear chat to make room)"}


def answer_line(stats, reload=None, stop_late: bool = False, why: str = "") -> str:
    """How the last answer went: the wait for its first word (and why, when documents were read again),
    its speed, and why it ended. `reload`: the `LoadStats` of a load that read documents again first; `why`:
    the reason it had to (`Workbench.load_reason`)."""
    if stats is None:
        return ""
    read = (reload.tokens - reload.reused) if reload is not None else 0
    if read:
        wait = reload.seconds + stats.ttft_s
        first = "read first" if why.startswith("they had not") else "read again first"
        because = f"; {why}" if why else ""
        parts = [f"First word after **{wait:.2f} s**: the documents were {first} ({read:,} tokens, "
                 f"{format_seconds(reload.seconds)}{because})"]
    else:
        parts = [f"First word after **{stats.ttft_s:.2f} s**",
                 f"the documents were reused from memory ({stats.cached_tokens:,} tokens, not read again)"]
    reread = getattr(stats, "reread_tokens", 0)
    if reread and reread > 200:
        parts.append(f"{reread:,} tokens of question and earlier exchanges were read first")
    parts.insert(1, f"{stats.new_tokens} tokens at {stats.tokens_per_s:.1f} tokens/s")
    if stats.finish_reason == "cancelled":
        parts.append(f"{FINISH_WORDS['cancelled']} after {stats.new_tokens:,} tokens")
    elif stats.finish_reason in FINISH_WORDS:
        parts.append(FINISH_WORDS[stats.finish_reason])
    if stop_late:
        parts.append("it finished before it could stop")
    if stats.dropped_turns:
        parts.append(f"the {stats.dropped_turns} oldest exchange(s) no longer fit and were left out")
    return " · ".join(parts)


def instructions_tag(system_prompt, backend) -> str:
    """A few words naming a conversation's instructions: the defaults, the defaults with citations, or own."""
    if not system_prompt:
        return ""
    if system_prompt == default_system_prompt(backend.model_name):
        return "default instructions"
    if system_prompt.replace(CITATION_FORMAT, "").strip() == default_system_prompt("demo").strip():
        return "default + citations" if CITATION_FORMAT in system_prompt else "default, no citations"
    return "own instructions: " + " ".join(system_prompt.split())[:40]


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


def citation_chips(checks, asked: bool = True, demo: bool = False) -> str:
    """HTML: one button per citation of the answer (`data-cite` = its position), marked by how it checked out.

    `asked`: whether the instructions asked for citations; `demo`: the CPU demo model, which is not asked."""
    if checks is None:
        return ""
    if not checks:
        why = ("The demo model is not asked for sources: it is too small to quote them reliably, so there is "
               "nothing to check." if demo and not asked else
               "No sources: the instructions do not ask for them (tick the box in Settings)." if not asked else
               "No citations in this answer.")
        return f"<div class='citations'><span class='cite-none'>{why}</span></div>"
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


SAVED_HEADERS = ["Conversation", "Files", "Tokens", "Questions", "Instructions", "Last used"]


def _files(sources: list[str], most: int = 3) -> str:
    names = [s.rstrip("/").rsplit("/", 1)[-1] + ("/" if s.endswith("/") else "") for s in sources]
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds)) if seconds else ""


def shortened(text: str, most: int = 60) -> str:
    """`text` on one line, cut at a word to at most `most` characters with "…" when longer."""
    line = " ".join(text.split())
    if len(line) <= most:
        return line
    cut = line[:most - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > most // 2 else cut).rstrip(" ,.;:") + "…"


def conversation_name(record) -> str:
    """What a saved conversation is about: its first question, shortened and quoted ("no questions yet")."""
    return f"“{shortened(record.first_question)}”" if record.first_question else "no questions yet"


def _questions(count: int) -> str:
    return f"{count} question{'' if count == 1 else 's'}" if count else "no questions"


def saved_rows(records) -> list[list]:
    """Table rows for this login's saved corpora and conversations (`app.sharing.saved.Record`): each named by its
    first question, so two conversations over the same documents read differently."""
    return [[conversation_name(r), _files(r.sources), f"{r.tokens:,}", r.exchanges, r.instructions,
             _when(r.updated)] for r in records]


def saved_choices(records) -> list[tuple[str, str]]:
    """(label, id) pairs for the Open/Remove menu: first question, files, date, number of questions and
    instructions, so no two read the same."""
    labels, out = set(), []
    for r in records:
        label = " · ".join(part for part in (
            conversation_name(r) if r.first_question else "", _files(r.sources, 2), _when(r.updated),
            _questions(r.exchanges), r.instructions) if part)
        if label in labels:
            label += f" · {r.id[:6]}"
        labels.add(label)
        out.append((label, r.id))
    return out


SAVED_NOTE = ("What you load is saved on this computer with its conversation. *Open* puts the documents and the "
              "conversation back (from disk, in seconds, instead of reading them again). With logins, each login "
              "sees only its own.")
