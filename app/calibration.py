"""Prefill speed measured on this machine, for the CPU: one short calibration, then corrected by every load.

The time of one prefill pass of `n` tokens written after `depth` cached tokens is modelled as

    seconds = per_pass + n * (per_token + per_token_depth * (depth + n / 2))

`per_token` is the linear layers (constant per token); `per_token_depth` is attention, whose work per token
grows with the depth it attends over; `per_pass` is the fixed cost of one forward (Python, kernel launches).
The first estimate comes from three timed passes on a scratch cache (a few hundred ms on a quiet machine);
each load refits the three numbers from its own chunks and keeps them in `calibration.json` beside the saved
corpora. One measurement made while the machine was busy must not stick: the rates in use are the newest
measurement's shape, scaled to a recency-weighted (geometric) mean of the last few measurements' speeds, and
how far those measurements disagree is the estimate's range (`Rates.low`/`high`), which the app and the CLI show
as "about X (A to B)" when the machine is noisy. During a load, `LiveEstimate` scales the model by how the
chunks actually ran, so a busy machine's estimate corrects itself within a few chunks.

A decoded token costs `per_decode` (a one-token pass with the LM head and sampling, timed as such: a one-token
pass is not on the prefill model's line) plus `per_decode_depth` per cached token: it reads the whole cache for
little arithmetic, so depth costs it several times more than a prefill token's share of a pass (demo model, 2-core
box: decoding after 4,073 tokens ran at 13.3 tokens/s against 17.2 after 273, where the prefill's depth term
alone planned 17.8). Both are timed by the calibration; `per_decode` is refitted from every answer's measured
speed (`Calibration.record_decode`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

FILE_NAME = "calibration.json"
CHUNK_TARGET_S = 0.4  # a CPU prefill chunk should take about this long: progress shows at least every ~0.5 s
MIN_CHUNK, MAX_CHUNK = 32, 2048
REFERENCE_TOKENS = 4096  # measurements are compared by the time each predicts for a load of this size
KEPT_MEASUREMENTS = 6  # the speeds of the last few measurements, newest weighted most
RECENCY = 0.5  # each older measurement weighs this much less than the one after it
NOISY = 1.3  # measurements that disagree by more than this factor: the estimate is said with a range
SIMULATED_TOKENS = 1 << 16  # loads up to this size are estimated chunk by chunk (larger: in closed form)


@dataclass
class Rates:
    """Seconds per prefill pass as a function of its tokens and depth (see the module docstring)."""

    per_token: float
    per_token_depth: float
    per_pass: float
    source: str = "calibration"  # "calibration" (timed passes) or "loads" (refitted from a load's chunks)
    measured: float = 0.0  # time.time() of the measurement
    per_decode: float = 0.0  # a decoded token after an empty cache: a one-token pass, the LM head, sampling
    per_decode_depth: float = 0.0  # a decoded token's added cost per cached token
    low: float = 1.0  # the range of recent measurements, as factors of these rates' time (1.0, 1.0: no range)
    high: float = 1.0

    @property
    def noisy(self) -> bool:
        """Whether recent measurements disagree enough that an estimate is better said with a range."""
        return self.high / max(self.low, 1e-9) > NOISY

    def decode_tokens_per_s(self, depth: int) -> float:
        """Tokens per second decoding after `depth` cached tokens."""
        step = self.decode_step_seconds(depth)
        return 1.0 / step if step > 0 else 0.0

    def decode_step_seconds(self, depth: int) -> float:
        """One decoded token after `depth` cached ones (rates without a timed decode: a one-token pass)."""
        if not self.per_decode:
            return self.pass_seconds(1, depth)
        return self.per_decode + self.per_decode_depth * depth

    def pass_seconds(self, tokens: int, depth: int) -> float:
        """One pass of `tokens` tokens after `depth` cached ones."""
        return self.per_pass + tokens * (self.per_token + self.per_token_depth * (depth + tokens / 2))

    def seconds(self, end: int, start: int = 0, chunk: int | None = None) -> float:
        """Positions start..end in passes of `chunk` tokens (None: the chunks `chunk_tokens` picks, as a load on a
        machine running at this speed reads them, the last one short)."""
        if end <= start:
            return 0.0
        tokens = end - start
        if chunk is None and self.per_pass > 0 and tokens <= SIMULATED_TOKENS:
            seconds, at = 0.0, start
            while at < end:  # the engine's own chunking: the fixed cost counts once per pass it will run
                n = min(self.chunk_tokens(at), end - at)
                seconds, at = seconds + self.pass_seconds(n, at), at + n
            return seconds
        passes = -(-tokens // (chunk or self.chunk_tokens((start + end) // 2)))
        return passes * self.per_pass + tokens * self.per_token + self.per_token_depth * (end**2 - start**2) / 2

    def chunk_tokens(self, depth: int, slowdown: float = 1.0, target_s: float = CHUNK_TARGET_S) -> int:
        """The chunk that takes about `target_s` at `depth` when the machine runs `slowdown` times slower."""
        budget = target_s / max(slowdown, 1e-3) - self.per_pass
        per_token = self.per_token + self.per_token_depth * depth
        tokens = int(budget / per_token) if budget > 0 and per_token > 0 else MIN_CHUNK
        return max(MIN_CHUNK, min(MAX_CHUNK, tokens // 16 * 16))

    def scaled(self, factor: float) -> "Rates":
        return Rates(self.per_token * factor, self.per_token_depth * factor, self.per_pass * factor,
                     self.source, self.measured, self.per_decode * factor, self.per_decode_depth * factor,
                     self.low, self.high)

    def reference_seconds(self) -> float:
        """The time these rates predict for a REFERENCE_TOKENS load: one number to compare measurements by."""
        return self.seconds(REFERENCE_TOKENS, 0, 512)


def fit(passes: list[tuple[int, int, float]], prior: Rates) -> Rates:
    """Rates refitted from a load's measured passes [(tokens, depth, seconds)], in the shape of `prior`.

    A load's chunks are all about the same size (each is sized to take CHUNK_TARGET_S), so they cannot tell a
    pass's fixed cost from its per-token cost: a free fit splits them at random, and a fixed cost fitted too
    high (0.3 s instead of 0.05 s) made small loads and the decode speed look several times slower than they
    are. So the fixed cost keeps the calibration's measurement (its one-token pass), scaled by how much slower
    or faster this load ran than `prior` predicted, and only the per-token and per-token-depth costs are fitted
    to what is left of each pass. When that fit is unsound (too few passes, too little depth to separate the
    two, a negative term from a noisy machine), only the prior's scale is fitted.
    """
    import numpy as np

    if not passes:
        return prior
    seconds = np.array([s for _, _, s in passes])
    predicted = sum(prior.pass_seconds(n, d) for n, d, _ in passes)
    scale = float(seconds.sum()) / predicted if predicted > 0 else 1.0
    per_pass = prior.per_pass * scale
    depths = {d for _, d, _ in passes}
    if len(passes) >= 6 and max(depths) - min(depths) >= 512:
        rows = np.array([[n, n * (d + n / 2)] for n, d, _ in passes])
        solution, *_ = np.linalg.lstsq(rows, seconds - per_pass, rcond=None)
        per_token, per_token_depth = (float(x) for x in solution)
        if per_token > 0 and per_token_depth >= 0:
            return Rates(per_token, per_token_depth, per_pass, "loads", time.time(), prior.per_decode * scale,
                         prior.per_decode_depth * scale)  # a machine that ran the load slower decodes slower
    scaled = prior.scaled(scale)
    scaled.source, scaled.measured = "loads", time.time()
    return scaled


class LiveEstimate:
    """The time left of a running load: the rates, scaled by how this load's chunks ran against them.

    The time estimate scales by all of this load's chunks so far, measured against predicted seconds, with
    `prior_s` predicted seconds of trust in the rates added to both sides: one noisy chunk moves it little,
    a machine that stays slower moves it all the way. Chunk sizes follow the last few chunks only, so a
    sudden slowdown shrinks the next chunk at once.
    """

    def __init__(self, rates: Rates, prior_s: float = 2.0, window: int = 6):
        self.rates, self.prior_s = rates, prior_s
        self.recent: deque[tuple[float, float]] = deque(maxlen=window)  # (measured, predicted) seconds
        self.measured = self.predicted = 0.0
        self.passes: list[tuple[int, int, float]] = []

    @property
    def slowdown(self) -> float:
        """This load's measured over predicted time, pulled toward 1.0 by the prior (1.0 before the first chunk)."""
        return (self.prior_s + self.measured) / (self.prior_s + self.predicted) if self.predicted > 0 else 1.0

    @property
    def recent_slowdown(self) -> float:
        measured, predicted = sum(m for m, _ in self.recent), sum(p for _, p in self.recent)
        return measured / predicted if predicted > 0 and measured > 0 else 1.0

    def record(self, tokens: int, depth: int, seconds: float) -> None:
        predicted = self.rates.pass_seconds(tokens, depth)
        self.passes.append((tokens, depth, seconds))
        self.recent.append((seconds, predicted))
        self.measured += seconds
        self.predicted += predicted

    def trust(self) -> None:
        """Give the rates half a chunk's worth of predicted seconds of trust against this load's own chunks, so
        the estimate follows what the machine does now within the first few chunks (a quarter when recent
        measurements disagreed: the rates are then known to be rough)."""
        self.prior_s = CHUNK_TARGET_S * (0.25 if self.rates.noisy else 0.5)

    def remaining(self, done: int, total: int, chunk: int | None = None) -> float:
        return self.slowdown * self.rates.seconds(total, done, chunk)

    def chunk_tokens(self, depth: int) -> int:
        return self.rates.chunk_tokens(depth, self.recent_slowdown)


def machine_key(model_name: str, dtype: str, threads: int) -> str:
    """What the rates depend on: the model, its compute dtype, the CPU and the threads torch runs."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{model_name}|{dtype}|{cpu}|threads={threads}|v2"  # v2: with the decode's depth term


class Calibration:
    """Rates for one model on this machine, kept in `folder/calibration.json` (without a folder: for this
    process only, shared by its engines), with the speeds of the last few measurements."""

    _in_memory: dict[str, tuple[Rates, list[float]]] = {}

    def __init__(self, key: str, folder: Path | str | None = None):
        self.key = key
        self.path = Path(folder) / FILE_NAME if folder is not None else None
        self.rates, self.recent = self._read() if self.path is not None else self._in_memory.get(key, (None, []))

    def _read(self) -> tuple[Rates | None, list[float]]:
        if self.path is None:
            return None, []
        try:
            record = dict(json.loads(self.path.read_text(encoding="utf-8")).get(self.key) or {})
            recent = [float(x) for x in record.pop("recent", [])]
            return (Rates(**record) if record else None), recent
        except (OSError, ValueError, TypeError, AttributeError):
            return None, []

    def update(self, measured: Rates) -> None:
        """Add a measurement of this machine's speed and keep the rates to use from now on (written atomically;
        a failed write only logs).

        The rates kept have the shape of `measured` (how time splits between tokens, depth and passes), scaled
        to the recency-weighted geometric mean of the last KEPT_MEASUREMENTS speeds, so one measurement taken
        while the machine was busy (or idle) moves the estimate only part of the way. How far those speeds
        spread becomes the rates' `low`/`high` range."""
        reference = measured.reference_seconds()
        if not reference > 0:
            return
        self.recent = (self.recent + [reference])[-KEPT_MEASUREMENTS:]
        weights = [RECENCY ** age for age in range(len(self.recent) - 1, -1, -1)]
        blended = math.exp(sum(w * math.log(r) for w, r in zip(weights, self.recent)) / sum(weights))
        rates = measured.scaled(blended / reference)
        rates.low, rates.high = min(self.recent) / blended, max(self.recent) / blended
        self._keep(rates)

    def record_decode(self, seconds_per_token: float, depth: int) -> None:
        """An answer decoded at `seconds_per_token` after `depth` cached tokens: refit the decode's cost at depth 0
        (the mean of the last estimate and this measurement, so one slow answer moves it halfway)."""
        if self.rates is None or not seconds_per_token > 0:
            return
        overhead = max(seconds_per_token - self.rates.per_decode_depth * depth, 0.0)
        rates = dataclasses.replace(self.rates, per_decode=(self.rates.per_decode + overhead) / 2
                                    if self.rates.per_decode else overhead)
        self._keep(rates)

    def _keep(self, rates: Rates) -> None:
        self.rates = rates
        if self.path is None:
            self._in_memory[self.key] = (rates, list(self.recent))
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                records = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                records = {}
            records[self.key] = {**asdict(rates), "recent": self.recent}
            temp = self.path.with_name(f".{FILE_NAME}.{os.getpid()}")
            temp.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
            os.replace(temp, self.path)
        except OSError as err:
            log.warning("could not keep the speed calibration in %s: %s", self.path, err)


def measure(run_pass, depth: int = 2048, tokens: int = 64, big: int = 160, repeats: int = 3) -> Rates:
    """Time passes through `run_pass(tokens, depth, decode=False) -> seconds` and solve for the rates.

    Loads run chunks of MIN_CHUNK tokens or more, so the pass model is fitted where they run: `tokens` and `big`
    tokens at depth 0 give `per_token` and `per_pass`, and `tokens` at `depth` gives `per_token_depth`. (A
    one-token pass costs more than that `per_pass`: it reads every weight for one token's arithmetic, where a
    longer pass's arithmetic hides part of the reading; fitted from it, `per_pass` came out 45 ms on the demo and
    small loads 1.3× too slow.) A one-token pass with the LM head and sampling (`decode=True`) gives
    `per_decode`, and one at `depth` gives `per_decode_depth`. The passes run `repeats` rounds, one of each per
    round, and each keeps its fastest time: another program's work only ever slows a pass down, and a burst of it
    (a browser drawing the page, a file being read) lands on one round rather than on every time of one pass.
    """
    run_pass(8, 0)  # warm-up: first-call allocations
    run_pass(1, 0, decode=True)
    shapes = {"flat": (tokens, 0, False), "big": (big, 0, False), "deep": (tokens, depth, False),
              "step": (1, 0, True), "step_deep": (1, depth, True)}
    fastest = {name: math.inf for name in shapes}
    for _ in range(repeats):
        for name, (n, d, decode) in shapes.items():
            fastest[name] = min(fastest[name], run_pass(n, d, decode=decode))
    flat, wide, deep, step, step_deep = (fastest[name] for name in shapes)
    per_token_depth = max((deep - flat) / (tokens * depth), 0.0)
    per_token = max((wide - flat - per_token_depth * (big**2 - tokens**2) / 2) / (big - tokens), 1e-6)
    per_pass = max(flat - tokens * (per_token + per_token_depth * tokens / 2), 0.0)
    return Rates(per_token, per_token_depth, per_pass, "calibration", time.time(), step,
                 max((step_deep - step) / depth, 0.0))


def planned_rates(shape, device_name: str, attention_devices: int = 1, attention_kernel: str = "default") -> Rates:
    """Rates from the planner's FLOP/s constants (GPUs: measured with bench/engine.py, not calibrated here);
    attention_kernel as in `planner.estimate_prefill_seconds`."""
    from app import planner

    linear_rate, attention_rate = planner._rates(device_name, attention_kernel)
    per_token = 2.0 * shape.layers * shape.layer_params() / linear_rate
    per_token_depth = 4.0 * shape.q_heads * shape.head_dim * shape.layers / (attention_rate * attention_devices)
    return Rates(per_token, per_token_depth, 0.0, "planner")
