"""Dock widget content in a scroll area, so the three docks fit a 1000-pixel-tall screen."""

from __future__ import annotations

from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget


def scroll_layout(widget: QWidget) -> QVBoxLayout:
    """Give ``widget`` a scroll area and return the layout to fill inside it.

    The content keeps its natural size and scrolls when the dock is smaller (napari stacks the
    docks of a plugin in one column; without scrolling, Train and Predict would be pushed off a
    1000-pixel screen).
    """
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    area = QScrollArea(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    content = QWidget()
    area.setWidget(content)
    outer.addWidget(area)
    widget.scroll_area = area
    widget.content = content
    return QVBoxLayout(content)
