"""What the backend session knows of an object besides its mask: the extreme points it was made from and
its clicks, kept in step with the session (as ``claraseg.engine.session.ObjectState`` keeps them), so a
re-opened session gets them back with ``Session.set_mask`` and treats the next click as before."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: Undo steps a record keeps, as the engine keeps per object (``claraseg.engine.session.MAX_UNDO``; that
#: module needs PyTorch, which the remote mode does without).
MAX_UNDO = 50

Points = tuple[tuple[int, int, int], ...]


def _points(points: Sequence[Sequence[int]]) -> Points:
    return tuple((int(p[0]), int(p[1]), int(p[2])) for p in points)


@dataclass(frozen=True)
class Prompts:
    """An object's extreme points and foreground/background clicks, voxel ``[i, j, k]``."""

    points: Points = ()
    foreground: Points = ()
    background: Points = ()

    @property
    def empty(self) -> bool:
        return not (self.points or self.foreground or self.background)

    def set_mask_args(self) -> dict[str, list[list[int]]]:
        """The keyword arguments of ``Session.set_mask`` that restore these prompts (only those given, so a
        backend whose ``set_mask`` predates them still takes a painted mask)."""
        return {name: [list(p) for p in value] for name, value in
                (("points", self.points), ("foreground", self.foreground), ("background", self.background)) if value}


class PromptRecord:
    """One object's :class:`Prompts` and undo history, changed only after the session's call succeeded.

    Mirrors the engine's session: extreme points replace the points and drop the clicks; a click (3D or
    2D) appends its clicks and keeps the points; a painted mask and clear empty them; every change but an
    undo (and a clear of an object the session does not hold) is an undo step, at most :data:`MAX_UNDO`.
    """

    def __init__(self) -> None:
        self.current = Prompts()
        self.history: list[Prompts] = []
        #: Whether the session holds the object (it has one once an interaction on it succeeded).
        self.in_session = False

    def _change(self, new: Prompts) -> None:
        self.history.append(self.current)
        del self.history[:-MAX_UNDO]
        self.current = new
        self.in_session = True

    def extreme_points(self, points: Sequence[Sequence[int]]) -> None:
        self._change(Prompts(points=_points(points)))

    def click(self, foreground: Sequence[Sequence[int]] = (), background: Sequence[Sequence[int]] = ()) -> None:
        cur = self.current
        self._change(Prompts(cur.points, cur.foreground + _points(foreground), cur.background + _points(background)))

    def painted(self) -> None:
        """A mask handed over without prompts (a segment the user painted)."""
        self._change(Prompts())

    def clear(self) -> None:
        if self.in_session:
            self._change(Prompts())

    def undo(self) -> None:
        if self.history:
            self.current = self.history.pop()

    def reopened(self, handed_back: bool, kept: bool = True) -> None:
        """A new session: it holds the object (one undo step back, to an empty object) when the object was
        handed back to it, with these prompts unless they could not be ``kept``; else nothing."""
        self.history = [Prompts()] if handed_back else []
        self.in_session = handed_back
        if not (handed_back and kept):
            self.current = Prompts()
