"""The memory and time planner: how many tokens fit, where they live, and how long a prefill takes.

Everything here is arithmetic on the model config and the devices' memory, so the app can refuse a corpus
that cannot fit *before* anything runs, with the numbers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

GiB = 1024**3
H200_BYTES = 143_771 * 1024**2  # what CUDA reports for one H200 ("141 GB")
CONTEXT_RESERVE_BYTES = int(1.0 * GiB)  # CUDA context, allocator slack, cuBLAS workspaces (per GPU)
QUESTION_RESERVE_TOKENS = 8192  # room kept after the corpus for the question, earlier turns and the answer
KV_ELEMENT_BYTES = {"fp32": 4, "bf16": 2, "fp8": 1}
WEIGHT_ELEMENT_BYTES = {"fp32": 4, "bf16": 2, "fp8": 1}

# Sustained rates used for time estimates, in FLOP/s: (linear layers, attention). Measured with
# bench/engine.py (see BENCHMARKS.md); a device not listed uses the closest kind.
THROUGHPUT = {
    "H100": (600e12, 360e12),
    "H200": (620e12, 330e12),
    "cuda": (300e12, 150e12),
    "cpu": (0.15e12, 0.05e12),
}
# Prefill attention through FlashAttention-3 (fa3-fwd, Hopper only), FLOP/s: bench/attention.py on an H200
# measured 654-682 TFLOP/s for 16K- and 64K-token chunks at 131K-1M depth, bf16 and fp8 caches (BENCHMARKS.md).
FA3_ATTENTION = {"H100": 650e12, "H200": 660e12}
# fp8 attention (`--attention fp8`: FA3 fp8 on the fp8 cache, 16K-key segments merged in fp32), FLOP/s of a whole
# prefill chunk's attention, merges included: bench/attention_fp8.py on an H200 measured 845-858 TFLOP/s for a
# 16K-token chunk at 131K, 1M and 2M (BENCHMARKS.md, 2026-12-04). H100: not measured; the same chip, so assumed.
FA3_FP8_ATTENTION = {"H100": 850e12, "H200": 850e12}
# Fixed cost of a prefill beyond its FLOPs (first-chunk launches, the last synchronisation), seconds: an H200
# prefilled 32,930 / 131,234 tokens in 1.96 / 10.52 s, 0.79 / 0.72 s over the FLOP-rate estimate.
PREFILL_FIXED_SECONDS = {"H100": 0.75, "H200": 0.75}
# Decode, one token: (fixed seconds a step, bytes/s reading weights and a bf16 cache, bytes/s reading an fp8
# cache). Fitted on an H200 (2026-12-01, BENCHMARKS.md): 8.4 / 11.8 / 16.1 ms a token over bf16 caches of
# 33K / 131K / 262K tokens, 39.9 ms over a 1,048,738-token fp8 cache; H100 from 14.8 ms at 131K bf16 and
# 26.2 ms at 524K fp8 (2026-11-27).
DECODE = {"H100": (3.2e-3, 2.87e12, 2.06e12), "H200": (3.2e-3, 3.9e12, 2.15e12), "cuda": (3.2e-3, 2.0e12, 1.5e12)}
# Decode over an fp8 cache through FA3's fp8 `flash_attn_with_kvcache` (`--attention fp8`): (seconds a step adds,
# bytes/s reading that cache). One layer's step read a 1M / 2M cache at 2.96 / 2.98 TB/s on an H200, and whole
# steps took 33.5 ms at 1,048,738 tokens (bf16 weights), 36.6 / 56.6 ms at 1,048,674 / 2,000,098 (fp8 weights):
# 2.7 ms a step more than the bandwidth (the query's quantisation, FA3's split merge); BENCHMARKS.md, 2026-12-04.
FA3_FP8_DECODE = {"H100": (2.7e-3, 2.1e12), "H200": (2.7e-3, 2.97e12)}
# fp8 weights add this to every decode step (the activations' quantisation and small fp8 GEMMs of 224 linear
# layers): fitted to the fp8-weight steps above, and within 2% of the 13.6 tokens/s measured at 2M with Triton.
FP8_WEIGHTS_STEP_SECONDS = 4.9e-3
# ... from this many cached tokens; below it the Triton kernel is faster and decodes (app/engine/attention_backend.py)
FA3_DECODE_MIN_TOKENS = 524_288


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    intermediate: int
    q_heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    window: int
    tied_embeddings: bool = False

    @classmethod
    def from_config(cls, config) -> "ModelShape":
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(config.num_hidden_layers, config.hidden_size, config.intermediate_size,
                   config.num_attention_heads, config.num_key_value_heads, head_dim, config.vocab_size,
                   config.max_position_embeddings, bool(getattr(config, "tie_word_embeddings", False)))

    def layer_params(self) -> int:
        attn = self.hidden * self.head_dim * (2 * self.q_heads + 2 * self.kv_heads)
        return attn + 3 * self.hidden * self.intermediate + 2 * self.hidden

    def params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * self.layer_params() + embeddings + self.hidden

    def kv_bytes_per_token_layer(self, kv_dtype: str) -> int:
        scales = 2 * self.kv_heads * 2 if kv_dtype == "fp8" else 0  # one bf16 scale per token and head, K and V
        return 2 * self.kv_heads * self.head_dim * KV_ELEMENT_BYTES[kv_dtype] + scales

    def workspace_bytes(self, chunk: int, kv_dtype: str, fp8_block: int = 131_072) -> int:
        """Peak temporaries of one prefill chunk on one device (activations, attention merges, logits)."""
        qd = self.q_heads * self.head_dim
        # Calibrated on an H100 (BENCHMARKS.md): 16K-token chunks of the 8B model peaked at 1.9-2.2 GiB.
        per_token = self.hidden * 2 * 4 + qd * (4 * 2 + 2 * 4) + self.intermediate * 2 * 3
        dequant = 2 * fp8_block * self.kv_heads * self.head_dim * 2 if kv_dtype == "fp8" else 0
        return chunk * per_token + dequant + self.vocab * 4 * 2

    def attention_workspace_bytes(self, chunk: int, fp8_block: int = 65_536) -> int:
        """Temporaries on a device that only holds KV shards: the query, fp32 partial outputs, a key block."""
        qd = self.q_heads * self.head_dim
        return chunk * qd * (2 + 4 * 2) + 2 * fp8_block * self.kv_heads * self.head_dim * 2

    def prefill_flops(self, tokens: int, start: int = 0) -> tuple[float, float]:
        """(linear, attention) FLOPs to prefill positions start..tokens."""
        linear = 2.0 * self.layers * self.layer_params() * (tokens - start) + 2.0 * self.vocab * self.hidden
        attention = 2.0 * (tokens**2 - start**2) * self.q_heads * self.head_dim * self.layers
        return linear, attention


@dataclass
class Device:
    name: str  # e.g. "NVIDIA H100 80GB HBM3" or "cpu"
    total_bytes: int
    free_bytes: int
    index: int | None = None  # CUDA device index


@dataclass
class DevicePlan:
    name: str
    layers: int
    weights_gib: float
    kv_gib: float
    workspace_gib: float
    free_gib: float


@dataclass
class Plan:
    tokens: int
    kv_dtype: str
    weight_dtype: str
    fits: bool
    max_tokens: int  # the most corpus tokens these devices hold with this KV dtype (within the window)
    window: int
    prefill_seconds: float
    decode_tokens_per_s: float
    devices: list[DevicePlan] = field(default_factory=list)
    reason: str = ""
    chunk_tokens: int = 16_384  # prefill chunk the plan was made for
    mode: str = "layers"  # "layers" or "sequence" (see plan())
    shard_tokens: list[int] = field(default_factory=list)  # sequence mode: tokens of KV on each device
    prefill_range_s: tuple[float, float] | None = None  # (low, high) when this machine's measured speed is noisy
    provisional: bool = False  # a window check made before the model was open: the backend plans again to load

    def to_json(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line for people: tokens against capacity, memory and time."""
        mem = ", ".join(f"{d.name}: {d.weights_gib:.1f} GiB weights + {d.kv_gib:.1f} GiB KV" for d in self.devices)
        if self.mode == "sequence":
            mem += " (KV split by position over the GPUs; attention runs on all at once)"
        verdict = "fits" if self.fits else "does NOT fit"
        prefill = format_seconds(self.prefill_seconds)
        if self.prefill_range_s:
            prefill += f" ({format_range(*self.prefill_range_s)}: this machine's speed varies)"
        return (f"{self.tokens:,} tokens {verdict} ({self.kv_dtype} KV, up to {self.max_tokens:,}); {mem}; "
                f"prefill ≈ {prefill}, decode ≈ {self.decode_tokens_per_s:.{0 if self.decode_tokens_per_s >= 100 else 1}f} tokens/s")


def question_reserve(window: int) -> int:
    """Tokens kept free after the corpus for the question, earlier turns and the answer, in a `window`-token model
    (a small window keeps an eighth). Every backend and view asks this, so they agree on what fits."""
    return min(QUESTION_RESERVE_TOKENS, window // 8)


def _windows() -> dict[str, int]:
    """Each known model's window (read lazily: the catalog imports nothing heavy, but planner stays first)."""
    from app.models_catalog import REGISTRY

    return {name: spec.window for name, spec in REGISTRY.items()}


def fit_advice(plan: Plan, reserve: int, overhead: int = 0) -> str:
    """What would make a refused corpus fit, from the plan's numbers: the one wording for the CLI and the app.

    `reserve` is what the plan kept for questions (`question_reserve`); `overhead` the tokens of instructions and
    chat template in `plan.tokens`, so the advice counts corpus tokens only.
    """
    from app.models_catalog import longer_models

    tips = [f"remove files to get under {max(plan.max_tokens - overhead, 0):,} tokens"]
    on_cpu = plan.kv_dtype != "server" and all(d.name == "cpu" for d in plan.devices)
    if plan.kv_dtype == "server":  # a remote server's window (app.remote.RemotePlan)
        tips.append("start the server with a longer --max-model-len")
    elif plan.max_tokens >= plan.window - reserve:  # the window is the limit, not memory
        longer = [name for name in longer_models(plan.window)
                  if _windows().get(name, 0) > plan.tokens + reserve] or longer_models(plan.window)[-1:]
        if on_cpu:  # advice that fits this machine: the long-window models need an NVIDIA GPU
            tips.append(f"run Omnibus on a computer with an NVIDIA GPU, where `--model {(longer or ['ultralong-1m'])[0]}`"
                        " reads it all")
        elif longer:
            tips.append(f"use a model with a longer window (--model {' or '.join(longer)})")
    elif on_cpu:
        tips.append("close other programs, or run Omnibus on a computer with more memory or an NVIDIA GPU")
    else:
        if plan.kv_dtype in ("bf16", "fp32"):
            tips.append("--kv-dtype fp8 halves the memory each token needs")
        if plan.weight_dtype == "bf16":
            tips.append("--weight-dtype fp8 frees about half the weights' memory")
        tips.append("use more GPUs or GPUs with more memory")
    return "To make it fit: " + "; or ".join(tips) + "."


def format_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def format_range(low: float, high: float) -> str:
    """`40 s to 1.5 min`: a span of seconds, each end in its own unit."""
    return f"{format_seconds(low)} to {format_seconds(high)}"


def split_layers(layers: int, devices: int) -> list[int]:
    """Layers per device for an even split (the first devices take the remainder)."""
    base, extra = divmod(layers, devices)
    return [base + (1 if i < extra else 0) for i in range(devices)]


def _rates(device_name: str, attention_kernel: str = "default") -> tuple[float, float]:
    """(linear, attention) FLOP/s on this device; attention_kernel "fa3" or "fa3-fp8": FlashAttention-3's rates."""
    for key in ("H200", "H100"):
        if key in device_name:
            linear, attention = THROUGHPUT[key]
            kernel_rates = {"fa3": FA3_ATTENTION, "fa3-fp8": FA3_FP8_ATTENTION}.get(attention_kernel, {})
            return linear, kernel_rates.get(key, attention)
    return THROUGHPUT["cpu" if device_name == "cpu" else "cuda"]


def estimate_prefill_seconds(shape: ModelShape, tokens: int, device_name: str, start: int = 0,
                             attention_devices: int = 1, attention_kernel: str = "default", measured=None) -> float:
    """Seconds to prefill positions start..tokens: from `measured` (app.calibration.Rates, the CPU's own
    calibrated speed) when given, else linear-layer and attention FLOPs over the measured rates above
    (attention_kernel "fa3" / "fa3-fp8": FlashAttention-3's bf16 / fp8 rate; the engine says which it runs)."""
    if measured is not None:
        return measured.seconds(tokens, start)
    linear_rate, attention_rate = _rates(device_name, attention_kernel)
    linear, attention = shape.prefill_flops(tokens, start)
    fixed = next((s for key, s in PREFILL_FIXED_SECONDS.items() if key in device_name), 0.0)
    return fixed + linear / linear_rate + attention / (attention_rate * attention_devices)


def estimate_decode_tokens_per_s(device_name: str, weight_bytes: int, kv_bytes: float, kv_dtype: str,
                                 attention_kernel: str = "default", weight_dtype: str = "bf16") -> float:
    """Tokens per second decoding: every step reads the weights and the whole cache once (measured rates;
    attention_kernel "fa3-fp8": the fp8 cache read by FA3's fp8 decode)."""
    if device_name == "cpu":
        return 20e9 / (weight_bytes + kv_bytes)
    step, bandwidth, fp8_bandwidth = next((v for key, v in DECODE.items() if key in device_name), DECODE["cuda"])
    if weight_dtype == "fp8":
        step += FP8_WEIGHTS_STEP_SECONDS
    fa3 = next((v for key, v in FA3_FP8_DECODE.items() if key in device_name), None)
    if attention_kernel == "fa3-fp8" and kv_dtype == "fp8" and fa3 is not None:
        step, fp8_bandwidth = step + fa3[0], fa3[1]
    return 1.0 / (step + weight_bytes / bandwidth + kv_bytes / (fp8_bandwidth if kv_dtype == "fp8" else bandwidth))


def plan(shape: ModelShape, tokens: int, devices: list[Device], kv_dtype: str = "auto", weight_dtype: str = "bf16",
         chunk: int = 16_384, reserve: int = QUESTION_RESERVE_TOKENS, resident_weights: list[int] | None = None,
         mode: str = "layers", attention_kernel: str = "default", measured=None) -> Plan:
    """Plan a corpus of `tokens` on `devices`. kv_dtype "auto" picks bf16 if it fits, else fp8.

    mode "layers": layers split evenly, each layer's KV on its layer's device (one device busy at a time).
    mode "sequence": the weights on the first device, every layer's KV split by position over all devices,
    so attention runs on all of them at once (`shard_tokens` says how many tokens each holds).
    resident_weights: bytes of weights already loaded on each device (their memory is no longer free);
    without it, the weights are computed from the shape and `weight_dtype` and must still fit.
    measured: app.calibration.Rates measured on this machine (the CPU); the time estimate then uses them.
    """
    if kv_dtype == "auto":
        choices = ["bf16", "fp8"] if devices[0].name != "cpu" else ["fp32"]
        plans = [plan(shape, tokens, devices, k, weight_dtype, chunk, reserve, resident_weights, mode,
                      attention_kernel if k == "fp8" else "default" if attention_kernel == "default" else "fa3",
                      measured) for k in choices]
        return next((p for p in plans if p.fits), plans[-1])
    sequence = mode == "sequence" and len(devices) > 1
    per_device_layers = [shape.layers] + [0] * (len(devices) - 1) if sequence else split_layers(shape.layers, len(devices))
    weight_bytes = WEIGHT_ELEMENT_BYTES[weight_dtype]
    embed_bytes = shape.vocab * shape.hidden * max(weight_bytes, 2)  # fp8 weights: embeddings and head stay bf16
    per_token_all = shape.layers * shape.kv_bytes_per_token_layer(kv_dtype)
    capacity, rooms, device_plans = math.inf, [], []
    last = len(devices) - 1 if not sequence else 0
    for i, (device, layers) in enumerate(zip(devices, per_device_layers)):
        if resident_weights is None:
            weights = layers * shape.layer_params() * weight_bytes
            weights += embed_bytes * ((i == 0) + (i == last and not shape.tied_embeddings))
            still_to_load = weights
        else:
            weights, still_to_load = resident_weights[i], 0
        # a full chunk, so max_tokens is the same for any corpus; shard-only devices just run attention
        workspace = shape.workspace_bytes(chunk, kv_dtype) if layers else shape.attention_workspace_bytes(chunk)
        room = max(device.free_bytes - still_to_load - workspace - (CONTEXT_RESERVE_BYTES if device.name != "cpu" else 0), 0)
        rooms.append(room)
        per_token = per_token_all if sequence else layers * shape.kv_bytes_per_token_layer(kv_dtype)
        if not sequence:
            capacity = min(capacity, room // per_token if per_token else math.inf)
        device_plans.append(DevicePlan(device.name, layers, weights / GiB, 0.0, workspace / GiB,
                                       device.free_bytes / GiB))
    shard_tokens: list[int] = []
    if sequence:
        capacity = sum(room // per_token_all for room in rooms)
        needed = min(tokens + reserve, max(capacity, 1))
        total_room = max(sum(rooms), 1)
        shard_tokens = [needed * room // total_room for room in rooms]
        shard_tokens[-1] += needed - sum(shard_tokens)
        for d, n in zip(device_plans, shard_tokens):
            d.kv_gib = n * per_token_all / GiB
    else:
        for d, layers in zip(device_plans, per_device_layers):
            d.kv_gib = layers * shape.kv_bytes_per_token_layer(kv_dtype) * (tokens + reserve) / GiB
    max_tokens = int(min(capacity - reserve, shape.window - reserve))
    fits = tokens <= max_tokens
    reason = ""
    if tokens + reserve > shape.window:
        reason = (f"the corpus is {tokens:,} tokens; the model window is {shape.window:,} "
                  f"({reserve:,} kept for the question and answer)")
    elif not fits:
        reason = (f"the corpus is {tokens:,} tokens; {len(devices)} device(s) hold {max(max_tokens, 0):,} "
                  f"with {kv_dtype} KV")
    name = devices[0].name
    kv_total = per_token_all * tokens
    all_weights = sum(resident_weights) if resident_weights is not None else \
        shape.layers * shape.layer_params() * weight_bytes + embed_bytes * (1 if shape.tied_embeddings else 2)
    spread = len(devices) if sequence else 1  # sequence mode reads the KV on every GPU at once
    decode_kernel = attention_kernel if tokens >= FA3_DECODE_MIN_TOKENS else "default"
    decode_rate = measured.decode_tokens_per_s(tokens) if measured is not None else \
        estimate_decode_tokens_per_s(name, all_weights, kv_total / spread, kv_dtype, decode_kernel, weight_dtype)
    prefill = estimate_prefill_seconds(shape, tokens, name, attention_devices=spread, attention_kernel=attention_kernel,
                                       measured=measured)
    spread_s = (prefill * measured.low, prefill * measured.high) if measured is not None and measured.noisy else None
    return Plan(tokens, kv_dtype, weight_dtype, fits, max(max_tokens, 0), shape.window, prefill, decode_rate,
                device_plans, reason, chunk, "sequence" if sequence else "layers", shard_tokens, spread_s)


def local_devices() -> list[Device]:
    """The CUDA GPUs present with their free memory, or the CPU (with the machine's available RAM)."""
    import torch

    if torch.cuda.is_available():
        out = []
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            out.append(Device(torch.cuda.get_device_name(i), total, free, i))
        return out
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        total, free = info["MemTotal"], info.get("MemAvailable", info["MemFree"])
    except OSError:
        total = free = 8 * GiB
    return [Device("cpu", total, free)]


def parse_gpus(spec: str) -> list[Device]:
    """'4x80' -> four 80 GiB GPUs (named H100 for the time estimate); '2x141' -> two H200-sized GPUs."""
    count, _, size = spec.lower().partition("x")
    gib = H200_BYTES if float(size) == 141 else float(size) * GiB  # "141": an H200 as CUDA reports it
    name = "H200 (planned)" if float(size) > 100 else "H100 (planned)"
    return [Device(name, int(gib), int(gib)) for _ in range(int(count))]
