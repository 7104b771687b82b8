"""What a widget undoes when Qt destroys it (widgets/_links.py), and that it can still be freed."""

from __future__ import annotations

import gc
import weakref

from psygnal import Signal
from qtpy.QtCore import QCoreApplication, QEvent
from qtpy.QtWidgets import QWidget

from napari_wsseg.widgets import _links
from napari_wsseg.widgets._links import link, on_destroyed


class Owner:
    """A long-lived object with a signal, like the session."""

    changed = Signal()


class Counting(QWidget):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def on_change(self) -> None:
        self.calls += 1


def _delete(widget: QWidget) -> None:
    widget.deleteLater()
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)


def test_destroyed_callback_runs_once_after_a_garbage_collection(qapp):
    seen, waiting = [], len(_links._WAITING)
    parent = QWidget()
    child = QWidget(parent)  # owned by Qt: its wrapper only reaches the slot through Qt
    on_destroyed(child, lambda runs=seen: runs.append("destroyed"))
    child.__dict__["cycle"] = child
    del child
    gc.collect()  # a slot reachable only through the widget would be cleared here
    _delete(parent)
    assert seen == ["destroyed"]
    assert len(_links._WAITING) == waiting


def test_destroyed_widget_is_disconnected_from_a_long_lived_signal(qapp):
    owner = Owner()
    widget = Counting()
    link(widget, owner.changed, widget.on_change)
    link(widget, owner.changed, lambda: widget.on_change())
    owner.changed.emit()
    assert widget.calls == 2
    _delete(widget)
    owner.changed.emit()  # a call now would touch a deleted Qt object
    assert len(owner.changed) == 0


def test_linked_widget_that_was_never_docked_can_still_be_freed(qapp):
    owner = Owner()
    widget = Counting()
    link(widget, owner.changed, lambda w=widget: w.on_change())  # the owner holds the widget
    widget_ref, waiting = weakref.ref(widget), len(_links._WAITING)
    del widget
    owner = None  # the owner and the widget are garbage together
    gc.collect()
    assert widget_ref() is None
    assert len(_links._WAITING) == waiting - 1  # its slot is not kept either
