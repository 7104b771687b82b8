"""Undo / redo of the point and box annotation layers (napari 0.9 has none for them). No Qt.

An :class:`EditHistory` keeps the annotation rows of one layer after each edit: ``(N, 4)``
``(z, y, x, class)`` for points, ``(N, 6)`` ``(z, y0, x0, y1, x1, class)`` for boxes. The
session records a state whenever the layer changes and restores one on Ctrl+Z / Ctrl+Shift+Z.
"""

from __future__ import annotations

import numpy as np

#: Edits kept per layer; older ones cannot be undone.
HISTORY_LIMIT = 200


class EditHistory:
    """The states of one layer's rows, oldest first; the last one is what the layer shows.

    Examples
    --------
    >>> history = EditHistory()
    >>> history.reset(np.zeros((0, 4), np.int64))
    >>> history.record(np.array([[0, 5, 5, 1]]))
    True
    >>> history.undo().shape, history.redo().tolist()
    ((0, 4), [[0, 5, 5, 1]])
    >>> history.redo() is None
    True
    """

    def __init__(self, limit: int = HISTORY_LIMIT) -> None:
        self.limit = limit
        self._done: list[np.ndarray] = []
        self._undone: list[np.ndarray] = []

    def reset(self, rows: np.ndarray) -> None:
        """Forget every edit; ``rows`` is the current state."""
        self._done, self._undone = [np.array(rows, copy=True)], []

    def record(self, rows: np.ndarray) -> bool:
        """Add ``rows`` as the newest state (True) unless nothing changed (False)."""
        if self._done and np.array_equal(rows, self._done[-1]):
            return False
        self._done.append(np.array(rows, copy=True))
        self._undone.clear()
        del self._done[: -self.limit - 1]
        return True

    def undo(self) -> np.ndarray | None:
        """The state before the last edit, or None when there is nothing to undo."""
        if len(self._done) < 2:
            return None
        self._undone.append(self._done.pop())
        return self._done[-1].copy()

    def redo(self) -> np.ndarray | None:
        """The state the last undo left, or None when there is nothing to redo."""
        if not self._undone:
            return None
        self._done.append(self._undone.pop())
        return self._done[-1].copy()
