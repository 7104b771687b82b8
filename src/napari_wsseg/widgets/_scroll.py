"""Dock widget content in a scroll area, so the three docks fit a 1000-pixel-tall screen."""

from __future__ import annotations

from qtpy.QtCore import QSize
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

#: A dock may shrink to this height (or its content's, if smaller); the rest scrolls. Three
#: docks of this height and napari's window frame fit a 1000-pixel-tall screen.
MIN_DOCK_HEIGHT = 250


class _DockScrollArea(QScrollArea):
    """Asks for its content's full size, and gets by with :data:`MIN_DOCK_HEIGHT`."""

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt name)
        content = self.widget().sizeHint()
        return QSize(
            content.width() + self.verticalScrollBar().sizeHint().width(), content.height()
        )

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt name)
        hint = super().minimumSizeHint()
        return QSize(hint.width(), min(self.widget().sizeHint().height(), MIN_DOCK_HEIGHT))


def scroll_layout(widget: QWidget) -> QVBoxLayout:
    """Give ``widget`` a scroll area and return the layout to fill inside it.

    The content keeps its natural size and scrolls when the dock is smaller (napari stacks the
    docks of a plugin in one column; without scrolling, Train and Predict would be pushed off a
    1000-pixel screen).
    """
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    area = _DockScrollArea(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    content = QWidget()
    area.setWidget(content)
    outer.addWidget(area)
    widget.scroll_area = area
    widget.content = content
    return QVBoxLayout(content)
