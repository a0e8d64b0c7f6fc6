"""What the docks' background workers yield when a run fails."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Failed:
    """A failed run, yielded rather than raised: superqt's worker turns a raised
    RuntimeError (most torch errors) into a warning and never emits ``errored``."""

    message: str

    @classmethod
    def of(cls, exc: BaseException) -> Failed:
        """An unexpected error, named by its type so the user can report it."""
        return cls(f"{type(exc).__name__}: {exc}")
