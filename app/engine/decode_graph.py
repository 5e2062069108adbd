"""The decode step captured once as a CUDA graph and replayed for every token after it.

The step's token and position live in device tensors that each replay refills, so every step has the same
shapes and addresses. A graph belongs to one cache as it was when captured (`captured_for`): a cache that was
reallocated or grown since, or is now read with other attention kernels or quantised otherwise, needs a new capture.
"""

from __future__ import annotations

import torch

from app.engine.kv_cache import KVCache


class DecodeGraph:
    """One token through `model` after `cache`'s committed sequence, as a CUDA graph on `device`."""

    def __init__(self, model, cache: KVCache, device: torch.device):
        self.key = self._key(cache)
        self.ids = torch.zeros(1, 1, dtype=torch.long, device=device)
        self.positions = torch.full((1, 1), cache.length, dtype=torch.long, device=device)

        def step():
            return model(input_ids=self.ids, position_ids=self.positions, past_key_values=cache, kv_cache=cache,
                         use_cache=True, logits_to_keep=1).logits

        length = cache.length
        with torch.inference_mode():
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up: Triton compilation, cuBLAS handles
                    step()
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.logits = step()  # [1, 1, V]
        cache.truncate(length)  # the warm-up wrote only past the committed sequence

    @staticmethod
    def _key(cache: KVCache):
        return id(cache), cache.version, cache.backend, cache.head_scaled

    def captured_for(self, cache: KVCache) -> bool:
        """Whether this graph runs on `cache` as it is now (the same buffers, kernels and quantisation)."""
        return self.key == self._key(cache)

    def replay(self, cache: KVCache, token: int) -> torch.Tensor:
        """Run `token` at `cache.length` and commit it; returns its logits [V]."""
        self.ids.fill_(token)
        self.positions.fill_(cache.length)
        self.graph.replay()
        cache.pending = 1
        cache.commit()
        return self.logits[0, -1]
