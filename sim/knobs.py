"""The simulator's knobs: their names, defaults, validation, and per-model overrides.

`Knobs` holds the behaviour applied to one request (latency, failure injection, limits, the
organisation a 429 names). A
`KnobSet` holds the global knobs, per-model overrides and the random seed, and merges JSON
patches into them the way `POST /sim/config` promises: top-level knob names replace the global
value (`null` is meaningful: "unlimited" for `rpm`/`tpm`, "no header" for `retry_after_s`);
`"models": {"m": {...}}` merges into model `m`'s override, where every key present wins over the
global value; `"models": {"m": null}` drops that override and `"models": null` drops them all.
A patch is validated whole before any of it applies, so a bad patch changes nothing.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

TIMEOUT = "timeout"
DEFAULT_ORGANIZATION = "org-sim"
# An organisation id as OpenAI prints them (`org-` and letters and digits); it goes into 429
# messages, which tests search for it, so it is kept to characters that need no escaping.
_ORGANIZATION = re.compile(r"[A-Za-z0-9_-]{1,64}")


class KnobError(ValueError):
    """A knob name or value the simulator does not accept."""


@dataclass(frozen=True)
class Knobs:
    latency_ms: float = 0
    latency_jitter_ms: float = 0
    fail_rate: float = 0
    fail_status: int | str = 500
    retry_after_s: float | None = 1
    hang_s: float = 30
    # Between the events of a streamed answer (one token each).
    stream_delay_ms: float = 0
    rpm: float | None = None
    tpm: float | None = None
    # The organisation a 429's message names, as OpenAI's and Anthropic's name the caller's.
    organization: str = DEFAULT_ORGANIZATION


KNOB_NAMES: tuple[str, ...] = tuple(field.name for field in fields(Knobs))
_NULLABLE = frozenset({"retry_after_s", "rpm", "tpm"})


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise KnobError(f"{name} must be a number, got {value!r}")
    if value < 0:
        raise KnobError(f"{name} must not be negative, got {value!r}")
    return value


def parse_fail_status(value: Any, name: str = "fail_status") -> int | str:
    """An HTTP status 400..599 (ints or digit strings) or the string "timeout"."""
    if value == TIMEOUT:
        return TIMEOUT
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 400 <= value <= 599:
        raise KnobError(f'{name} must be an HTTP status 400..599 or "timeout", got {value!r}')
    return value


def parse_knob(name: str, value: Any) -> Any:
    """Validate one knob value, returning it in its canonical form."""
    if name not in KNOB_NAMES:
        raise KnobError(f"unknown knob {name!r}; known: {', '.join(KNOB_NAMES)}")
    if value is None:
        if name in _NULLABLE:
            return None
        raise KnobError(f"{name} must not be null")
    if name == "fail_status":
        return parse_fail_status(value)
    if name == "organization":
        if not isinstance(value, str) or not _ORGANIZATION.fullmatch(value):
            raise KnobError(f"organization must be 1..64 letters, digits, '-' or '_', got {value!r}")
        return value
    number = _number(name, value)
    if name == "fail_rate" and number > 1:
        raise KnobError(f"fail_rate must be within 0..1, got {value!r}")
    if name in ("rpm", "tpm") and number == 0:
        raise KnobError(f"{name} must be positive or null (unlimited), got {value!r}")
    # Whole numbers stay ints, so the config reads back as given on the command line: 600, not 600.0.
    return int(number) if isinstance(number, float) and number.is_integer() else number


def parse_knobs(patch: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a mapping of knob names to values."""
    if not isinstance(patch, Mapping):
        raise KnobError(f"knobs must be a JSON object, got {patch!r}")
    return {name: parse_knob(name, value) for name, value in patch.items()}


def _seed(value: Any) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise KnobError(f"seed must be an integer or null, got {value!r}")
    return value


class KnobSet:
    """Global knobs, per-model overrides and the seed; the start-up state can be restored."""

    def __init__(self, base: Knobs | None = None, seed: int | None = None) -> None:
        self._initial = (base or Knobs(), _seed(seed))
        self.restore()

    def restore(self) -> None:
        """Return to the knobs the simulator started with."""
        self.base, self.seed = self._initial
        self._overrides: dict[str, dict[str, Any]] = {}
        self._effective: dict[str, Knobs] = {}

    def for_model(self, model: str) -> Knobs:
        """The knobs that apply to `model`: its override merged over the global knobs."""
        knobs = self._effective.get(model)
        if knobs is None:
            override = self._overrides.get(model)
            knobs = dataclasses.replace(self.base, **override) if override else self.base
            self._effective[model] = knobs
        return knobs

    def apply(self, patch: Mapping[str, Any]) -> None:
        """Merge a `POST /sim/config` patch; raises KnobError and changes nothing if any part is bad."""
        if not isinstance(patch, Mapping):
            raise KnobError("the config patch must be a JSON object")
        patch = dict(patch)
        seed = _seed(patch.pop("seed")) if "seed" in patch else self.seed
        models_patch = patch.pop("models", {})
        base = dataclasses.replace(self.base, **parse_knobs(patch))
        if models_patch is None:
            overrides: dict[str, dict[str, Any]] = {}
        elif isinstance(models_patch, Mapping):
            overrides = {model: dict(knobs) for model, knobs in self._overrides.items()}
            for model, model_patch in models_patch.items():
                if model_patch is None:
                    overrides.pop(model, None)
                else:
                    overrides.setdefault(model, {}).update(parse_knobs(model_patch))
        else:
            raise KnobError("models must be a JSON object mapping model names to knobs, or null")
        self.base, self.seed, self._overrides = base, seed, overrides
        self._effective = {}

    def as_json(self) -> dict[str, Any]:
        """The current configuration, in the shape `POST /sim/config` accepts."""
        return {
            **dataclasses.asdict(self.base),
            "seed": self.seed,
            "models": {model: dict(knobs) for model, knobs in self._overrides.items()},
        }
