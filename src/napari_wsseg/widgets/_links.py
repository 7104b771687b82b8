"""What a widget undoes when Qt destroys it: connections from long-lived objects (session, viewer)
dropped, key bindings removed, a process ended.

The session and the viewer outlive a dock widget the user closes; a slot of a deleted Qt widget
must not be called, so every such connection goes through :func:`link` and is disconnected when
the widget is destroyed.

Every ``destroyed`` slot is held by this module as well as by Qt. A slot held only through the
widget is freed with it: when the garbage collector breaks a reference cycle holding a widget it
clears the Python functions only that cycle reaches (a lambda's defaults, closure, globals and
name) and Qt may emit ``destroyed`` after that, calling a cleared lambda (CI saw
``<lambda>() missing 1 required keyword-only argument`` raised in the Qt event loop). So the
slots and what they keep must not hold the widget strongly (it would never be freed): they keep
weak references to the widget's signals' owners, slots and viewer.
"""

from __future__ import annotations

import weakref
from typing import Callable

#: The ``destroyed`` slots of widgets that have not been destroyed yet.
_WAITING: set[Callable] = set()


def on_destroyed(widget, callback: Callable[[], None]) -> None:
    """Call ``callback()`` once when Qt destroys ``widget`` (a QObject).

    ``callback`` must not hold ``widget`` strongly (see the module docstring).
    """

    def slot(*_):
        _WAITING.discard(slot)
        callback()

    _WAITING.add(slot)
    widget.destroyed.connect(slot)
    # A wrapper freed by Python may take its Qt object along without emitting ``destroyed``.
    weakref.finalize(widget, _WAITING.discard, slot)


def link(widget, signal, slot) -> None:
    """``signal.connect(slot)`` until ``widget`` (a QObject) is destroyed.

    ``signal`` is a psygnal signal, a napari event emitter or a Qt signal.
    """
    signal.connect(slot)
    links = widget.__dict__.get("_wsseg_links")
    if links is None:
        links = widget.__dict__["_wsseg_links"] = []
        on_destroyed(widget, lambda: _unlink(links))
    links.append((_weak_signal(signal), _weak_slot(slot)))


def _unlink(links: list) -> None:
    for signal_ref, slot_ref in links:
        signal, slot = signal_ref(), slot_ref()
        if signal is None or slot is None:  # gone with its owner, and its connections with it
            continue
        try:
            signal.disconnect(slot)
        except (RuntimeError, ValueError, TypeError):  # already gone with its owner
            pass
    links.clear()


def _weak_slot(slot) -> Callable[[], Callable | None]:
    """A weak reference to ``slot``; the signal holds it as long as it is connected."""
    if hasattr(slot, "__self__") and hasattr(slot, "__func__"):
        return weakref.WeakMethod(slot)
    try:
        return weakref.ref(slot)
    except TypeError:  # a builtin: holds nothing of the widget
        return lambda: slot


def _weak_signal(signal) -> Callable[[], object | None]:
    """A weak way back to ``signal``: its owner may hold the widget through connected lambdas."""
    try:
        return weakref.ref(signal)  # a napari event emitter
    except TypeError:
        pass
    owner, name = getattr(signal, "instance", None), getattr(signal, "name", None)
    if owner is not None and isinstance(name, str):  # a psygnal signal instance
        try:
            owner_ref = weakref.ref(owner)
        except TypeError:
            return lambda: signal
        return lambda: getattr(owner_ref(), name, None)
    return lambda: signal  # a Qt signal of a long-lived object (the application)
