"""The local GPU/CPU engine: the model, its preallocated KV cache, the attention kernels and the prefill/decode loop.

Only this package imports torch and Triton at module level. `engine.Engine` is the entry point: prefill a corpus
once into `kv_cache.KVCache`, then answer each question from the cached prefix. `models` loads a model named in
`app.models_catalog`; `attention` (registered with transformers) and `decode_kernel` (Triton) attend over the
cache, with the kernels for each cache chosen once by `attention_backend` (`fa3_fp8`: FlashAttention-3's fp8
kernels for `--attention fp8`); `decode_graph` replays the decode step as a CUDA graph; `fp8_linear` holds fp8 weights; `generation`
samples and streams text.
"""
