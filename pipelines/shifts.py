"""The distribution shifts a run is tested under after training (`eval.shifts`), parsed once.

A shift is written `<kind>:<severity>`: `gaussian_noise:0.1` (sigma, images in [0, 1]), `blur:1.5` (Gaussian
sigma in pixels), `rotate:30` (a random angle within ±30 degrees per image), `jpeg:20` (JPEG quality). Here,
torch-free, so that the config refuses a bad one with the rest of the config; the transforms that apply
them live in pipelines/data/shifted.py.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

from pipelines.errors import ConfigError

# kind → (what its severity is, the test it must pass, whether it is a whole number)
KINDS = {
    "gaussian_noise": ("sigma in (0, 1]", lambda v: 0 < v <= 1, False),
    "blur": ("sigma in pixels in (0, 20]", lambda v: 0 < v <= 20, False),
    "rotate": ("max degrees in (0, 180]", lambda v: 0 < v <= 180, False),
    "jpeg": ("quality, a whole number in 1..100", lambda v: 1 <= v <= 100, True),
}
FORMS = ", ".join(f"{kind}:<{what}>" for kind, (what, _, _) in KINDS.items())


@dataclass(frozen=True)
class Shift:
    kind: str
    severity: float

    @property
    def spec(self) -> str:
        """As a user writes it: `gaussian_noise:0.1`."""
        return f"{self.kind}:{self.severity:g}"

    @property
    def name(self) -> str:
        """The spec with `_` for `:`, which MLflow does not take in a metric key on every platform (nor a
        Windows file name): `shift/gaussian_noise_0.1/acc`, `reports/shift_predictions/gaussian_noise_0.1.csv`."""
        return f"{self.kind}_{self.severity:g}"

    @classmethod
    def parse(cls, text: str) -> Shift:
        kind, sep, value = str(text).strip().partition(":")
        if kind not in KINDS:
            close = difflib.get_close_matches(kind, KINDS, n=1)
            hint = f"did you mean '{close[0]}:{value}'? " if close and sep else ""
            raise ConfigError(f"eval.shifts: unknown shift '{text}' ({hint}valid: {FORMS})")
        what, ok, whole = KINDS[kind]
        try:
            severity = float(value)
        except ValueError:
            severity = math.nan
        if not (math.isfinite(severity) and ok(severity)) or (whole and not severity.is_integer()):
            raise ConfigError(f"eval.shifts: '{text}' needs {kind}:<{what}> (valid: {FORMS})")
        return cls(kind, severity)


def parse_shifts(specs: tuple[str, ...]) -> tuple[Shift, ...]:
    """Each spec parsed, in order; two that name the same shift (`blur:1.5`, `blur:1.50`) are refused."""
    shifts = tuple(Shift.parse(text) for text in specs)
    names = [s.name for s in shifts]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"eval.shifts lists {', '.join(twice)} more than once")
    return shifts


def spec_of(name: str) -> str:
    """A shift's name back to its spec (`gaussian_noise_0.1` → `gaussian_noise:0.1`), for a summary's headings."""
    kind, _, severity = name.rpartition("_")
    return f"{kind}:{severity}" if kind in KINDS else name
