"""User-facing errors: each one is printed as a single line, without a traceback."""


class FreezeframeError(Exception):
    """Bad input or an unusable environment, reported before (or instead of) training."""


class ConfigError(FreezeframeError):
    """An experiment file or override that does not fit the config schema."""


class UnknownNameError(FreezeframeError):
    """A name-keyed factory was asked for a name it does not know."""


class WeightsError(FreezeframeError):
    """Weights that cannot be found, downloaded or loaded into the model."""


class DataError(FreezeframeError):
    """A dataset that cannot be found, read or split."""


class TrainingError(FreezeframeError):
    """Training that cannot go on (a NaN loss, for instance)."""


class PeerLost(KeyboardInterrupt):
    """Another process of a data-parallel run died: this one stops as interrupted (its run ends KILLED,
    resumable), not as a failure of its own."""


class StoppedByProcessZero(Exception):
    """Process 0 of a data-parallel run stopped it after an epoch (Optuna pruned the trial, its tracking
    store went away): the other processes end with it, quietly; process 0 reports why."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's first line for a one-line message; its type when it says nothing (EOFError())."""
    lines = str(getattr(exc, "message", None) or exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]


def without_password(url: str) -> str:
    """A URL fit for a message: its password (postgresql://user:pw@host/db) replaced by ***."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f"{parts.username}:{parts.password}@", f"{parts.username}:***@", 1)
