"""Saved corpora as model ids: `omnibus/3fa9c1e2` names an entry of the disk cache (app.store) and means
"answer over that corpus". An entry keeps its prefix token ids (system prompt, chat template, documents);
`open_saved` splits them back into the system prompt and the documents, and proves the split exact by
rebuilding the prefix from the two."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.store.cache_key import ids_hash
from app.store.entry import Entry
from app.store.library import IDS_FILE

PREFIX = "omnibus/"
_SPLITS: dict = {}  # (entry id, tokenizer id) -> (system prompt, corpus ids) of the last saved corpus asked
ID_CHARS = 8  # as `cache list` shows ids: unique in practice, short enough to type


@dataclass
class SavedCorpus:
    """A saved corpus ready to ask: what the engine loads to reopen it (from disk, not by prefilling)."""

    model_id: str
    entry: Entry
    system_prompt: str
    corpus_ids: list[int]


def model_id(entry: Entry) -> str:
    return PREFIX + entry.id[:ID_CHARS]


def _model_part(fp: dict) -> dict:
    return {k: v for k, v in fp.items() if k != "kv_dtype"}


def catalog(engine) -> list[Entry]:
    """The saved corpora this engine can answer over (its model, any KV dtype), most recently used first."""
    store = engine.store
    if store is None:
        return []
    mine = _model_part(engine.fingerprint(""))
    return [e for e in store.entries() if e.kind == "corpus" and (e.path / IDS_FILE).is_file()
            and _model_part(e.meta.get("fingerprint", {})) == mine]


def owned_ids(store, login: str | None) -> set[str] | None:
    """The saved corpora (full entry ids) a login may list and ask over: those its saved conversations use
    (app.sharing.saved, one folder per login). None: every one (a server without logins)."""
    if login is None:
        return None
    if store is None:
        return set()
    from app.sharing.saved import Library

    return {r.kv_id for r in Library(store.root).records(login) if r.kv_id}


def visible(entries, owned: set[str] | None) -> list:
    """The `entries` (store entries, or /v1 model objects with an `omnibus/ID` id) that `owned` allows."""
    if owned is None:
        return list(entries)
    short = {PREFIX + e[:ID_CHARS] for e in owned}
    return [e for e in entries if (e.id in owned if isinstance(e, Entry) else e["id"] in short)]


def resolve_owned(engine, name: str, owned: set[str] | None) -> str | None:
    """The `omnibus/ID` that `name` (any unique start of an id) names among the corpora `owned` allows, else None."""
    ident = name[len(PREFIX):] if name.startswith(PREFIX) else None
    if not ident:
        return None
    found = [e for e in visible(catalog(engine), owned) if e.id.startswith(ident)]
    return model_id(found[0]) if len(found) == 1 else None


def entry_for(engine, corpus_ids, system_prompt: str) -> Entry | None:
    """The saved corpus on disk that holds exactly this prefix (system prompt and corpus), if there is one."""
    wanted = ids_hash(np.asarray(engine.prompt_prefix(list(corpus_ids), system_prompt), dtype="<i4"))
    return next((e for e in catalog(engine) if e.meta.get("prefix_sha256") == wanted), None)


def saved_for_model(store, model: str) -> list[Entry]:
    """Before a model is loaded: the saved corpora whose fingerprint names `model` (all of them for "auto"). Once
    it is loaded, `catalog` checks the whole fingerprint."""
    if store is None:
        return []
    return [e for e in store.entries() if e.kind == "corpus" and (e.path / IDS_FILE).is_file()
            and model in ("auto", e.meta.get("fingerprint", {}).get("model"))]


def open_saved(engine, name: str) -> SavedCorpus | None:
    """The saved corpus that `name` (`omnibus/ID`, any unique start of the id) names, or None."""
    ident = name[len(PREFIX):] if name.startswith(PREFIX) else None
    if not ident:
        return None
    found = [e for e in catalog(engine) if e.id.startswith(ident)]
    if len(found) != 1:
        return None
    entry = found[0]
    key = (entry.id, id(engine.tokenizer))
    if key not in _SPLITS:
        ids = np.fromfile(entry.path / IDS_FILE, dtype="<i4")
        if ids_hash(ids) != entry.meta.get("prefix_sha256"):
            return None  # damaged: the engine's own checks remove such an entry when it next restores
        split = split_prefix(engine, ids.tolist())
        if split is None:
            return None
        _SPLITS.clear()  # one at a time: a split of a 1M-token corpus is 4 MB of ids
        _SPLITS[key] = split
    system, corpus = _SPLITS[key]
    return SavedCorpus(model_id(entry), entry, system, corpus)


def split_prefix(engine, prefix: list[int]) -> tuple[str, list[int]] | None:
    """(system prompt, corpus ids) whose prompt prefix is exactly `prefix`, or None if none is found.

    The template's tokens before and after the system prompt are found by rendering two different ones;
    the system prompt is what lies between them (its own text never holds a control token).
    """
    one, two = engine.prompt_prefix([], "a"), engine.prompt_prefix([], "b")
    lead = _common(one, two)
    tail = _common(one[::-1], two[::-1])
    before, after = one[:lead], one[len(one) - tail:]
    candidates = [("", prefix[len(engine.prompt_prefix([], "")):])]  # no system prompt at all
    if prefix[:lead] == before:
        for end in range(lead, len(prefix) - len(after) + 1):
            if prefix[end:end + len(after)] == after:
                system = engine.tokenizer.decode(prefix[lead:end], skip_special_tokens=False,
                                                 clean_up_tokenization_spaces=False)
                candidates.insert(0, (system, prefix[end + len(after):]))
                break
    for system, corpus in candidates:
        if engine.prompt_prefix(corpus, system) == prefix:
            return system, corpus
    return None


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n
