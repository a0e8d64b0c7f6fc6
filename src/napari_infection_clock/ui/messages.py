"""Status lines that never widen a dock: short, wrapped, with the long cause on demand.

A message from deep inside (PyTorch's paragraph about ``weights_only``, a traceback) would
otherwise set a label's minimum width and grow napari's window past the screen. The line
shows the first sentence-sized part; the whole text is its tooltip.
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel, QSizePolicy

#: Longest message shown in a status line; the rest is in its tooltip.
MAX_CHARS = 300


def fit_messages(label: QLabel) -> None:
    """Make ``label`` wrap, selectable, and never ask for more width than its dock has."""
    label.setWordWrap(True)
    label.setMinimumWidth(0)
    label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)


def short(message: str) -> str:
    """The first line of ``message``, cut to :data:`MAX_CHARS` characters."""
    first = message.strip().splitlines()[0] if message.strip() else ""
    return first if len(first) <= MAX_CHARS else first[: MAX_CHARS - 1].rstrip() + "…"


def show(label: QLabel, message: str, details: str = "") -> None:
    """Put a short ``message`` in ``label``; the full text and ``details`` in its tooltip."""
    label.setText(short(message))
    full = "\n\n".join(part for part in (message.strip(), details.strip()) if part)
    label.setToolTip(full if full != label.text() else "")
