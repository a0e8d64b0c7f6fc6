"""What napari's notifications said while a block ran (a toast, or a line on stdout)."""

from __future__ import annotations

import contextlib

from napari.utils.notifications import notification_manager


@contextlib.contextmanager
def notifications_said():
    """The messages of the notifications dispatched inside the block, as a list."""
    said: list[str] = []

    def heard(notification) -> None:
        said.append(str(notification.message))

    notification_manager.notification_ready.connect(heard)
    try:
        yield said
    finally:
        notification_manager.notification_ready.disconnect(heard)
