"""What makes a saved KV cache valid: the model's fingerprint and a hash of the exact prefix token ids."""

from __future__ import annotations

import hashlib
import json
import weakref

import numpy as np

FORMAT = 2  # 2: xxh3 segments, shard-independent layout. Bump when the file layout or what the KV values depend on changes

_model_fingerprints: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_tokenizer_fingerprints: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _weights_sample(model) -> str:
    """Hash of a few hundred values from the first, middle and last weights: different weights under one name
    (random-weights runs, local fine-tunes) never share entries. Cheap: a few KB leave the device."""
    params = [p for _, p in model.named_parameters()]
    digest = hashlib.sha256()
    for p in (params[0], params[len(params) // 2], params[-1]):
        digest.update(p.detach().reshape(-1)[:512].float().cpu().numpy().tobytes())
        digest.update(str(tuple(p.shape)).encode())
    digest.update(str(sum(p.numel() for p in params)).encode())
    return digest.hexdigest()


def _tokenizer_fingerprint(tokenizer) -> str:
    """Hash of the tokenizer's full specification (its backend JSON) and special ids (computed once per tokenizer)."""
    try:
        return _tokenizer_fingerprints[tokenizer]
    except (KeyError, TypeError):
        pass
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = backend.to_str() if backend is not None else ""
    special = [len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]
    found = sha((json.dumps(special) + spec).encode())
    try:
        _tokenizer_fingerprints[tokenizer] = found
    except TypeError:
        pass
    return found


def _model_fingerprint(engine) -> dict:
    config = engine.model.config
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    shape = engine.shape
    return {
        "model": engine.model_name,
        "name_or_path": getattr(config, "_name_or_path", ""),
        "revision": getattr(config, "_commit_hash", None),
        "weight_dtype": getattr(engine, "weight_dtype", None),
        "compute_dtype": str(engine.dtype),
        "layers": shape.layers, "q_heads": shape.q_heads, "kv_heads": shape.kv_heads,
        "head_dim": shape.head_dim, "hidden": shape.hidden, "vocab": shape.vocab, "window": shape.window,
        "rope": json.loads(json.dumps(rope, sort_keys=True, default=str)),
        "rope_theta": getattr(config, "rope_theta", None),
        "weights": _weights_sample(engine.model),
        "tokenizer": _tokenizer_fingerprint(engine.tokenizer),
    }


def fingerprint(engine, kv_dtype: str) -> dict:
    """Everything besides the token ids that decides the cached keys and values (computed once per model)."""
    base = _model_fingerprints.get(engine.model)
    if base is None:
        base = _model_fingerprints[engine.model] = _model_fingerprint(engine)
    return {**base, "kv_dtype": kv_dtype, "format": FORMAT}


def fingerprint_hash(fp: dict) -> str:
    return sha(json.dumps(fp, sort_keys=True).encode())


def ids_hash(ids) -> str:
    """sha256 of token ids as little-endian int32."""
    return sha(np.asarray(ids, dtype="<i4").tobytes())
