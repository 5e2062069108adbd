"""Saved corpora: processed KV caches on disk, keyed by everything that shapes them, reopened instead of prefilled.

`library.Store` is the entry point; `entry` reads and checks a saved entry's `meta.json`, `cache_key` says what
makes two caches the same, `kv_files` reads and writes one layer's tensors with checksums. The tensors come from
the engine; torch is imported only with them.
"""
