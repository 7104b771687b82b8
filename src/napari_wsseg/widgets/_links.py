"""Connections from long-lived objects (session, viewer) to a widget, dropped with the widget.

The session and the viewer outlive a dock widget the user closes; a slot of a deleted Qt widget
must not be called, so every such connection goes through :func:`link` and is disconnected when
the widget is destroyed.
"""

from __future__ import annotations


def link(widget, signal, slot) -> None:
    """``signal.connect(slot)`` until ``widget`` (a QObject) is destroyed.

    ``signal`` is a psygnal signal or a napari event emitter (both have ``disconnect``).
    """
    signal.connect(slot)
    links = widget.__dict__.setdefault("_wsseg_links", [])
    if not links:
        widget.destroyed.connect(lambda *_: _unlink(links))
    links.append((signal, slot))


def _unlink(links: list) -> None:
    for signal, slot in links:
        try:
            signal.disconnect(slot)
        except (RuntimeError, ValueError, TypeError):  # already gone with its owner
            pass
    links.clear()
