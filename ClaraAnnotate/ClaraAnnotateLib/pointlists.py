"""The tools' point lists on a MRML scene: foreground and background clicks and extreme points as markups
point lists, observed so that a point placed in a click list runs the click, and cleared when another
segment is picked. Mixed into :class:`~ClaraAnnotateLib.interaction.InteractionLogic`.
"""

import slicer
import vtk

from . import nodes

#: The point lists: name and colour of each.
POINT_LISTS = {"foreground": ("Clara-P", (0.2, 0.9, 0.2)), "background": ("Clara-N", (0.95, 0.2, 0.2)),
               "extreme": ("Clara-E", (1.0, 0.85, 0.1))}


class ToolState:
    """The tools' point lists and chosen models. The Slicer module keeps them in its parameter node
    (saved with the scene); without it they live here, with the same attribute names."""

    def __init__(self) -> None:
        self.foregroundPoints = None
        self.backgroundPoints = None
        self.extremePoints = None
        self.clickModel = ""
        self.extremeModel = ""
        self.autoModel = ""


class PointListsMixin:
    """Point-list handling of :class:`~ClaraAnnotateLib.interaction.InteractionLogic` (a
    ``VTKObservationMixin``): it needs ``getParameterNode()``, ``segmentEditorNode()``, ``scene``,
    ``clickAt()`` and ``_notify()`` of the logic."""

    _ignorePointEvents = False
    _selected = None

    def ensurePointLists(self, pn=None) -> None:
        """Create the foreground, background and extreme point lists when missing and observe them: a
        point placed in a foreground/background list is a click (:meth:`clickAt`)."""
        pn = pn or self.getParameterNode()
        for attr, key in (("foregroundPoints", "foreground"), ("backgroundPoints", "background"),
                          ("extremePoints", "extreme")):
            node = getattr(pn, attr)
            if node is None:
                name, color = POINT_LISTS[key]
                node = nodes.point_list(name, color, self.scene)
                setattr(pn, attr, node)
            defined = slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent
            if key != "extreme":
                if not self.hasObserver(node, defined, self._onPointDefined):
                    self.addObserver(node, defined, self._onPointDefined)
            else:
                for event in (defined, slicer.vtkMRMLMarkupsNode.PointRemovedEvent):
                    if not self.hasObserver(node, event, self._onExtremePointsChanged):
                        self.addObserver(node, event, self._onExtremePointsChanged)

        editorNode = self.segmentEditorNode()
        if not self.hasObserver(editorNode, vtk.vtkCommand.ModifiedEvent, self._onEditorNodeModified):
            self.addObserver(editorNode, vtk.vtkCommand.ModifiedEvent, self._onEditorNodeModified)

    def _onEditorNodeModified(self, caller, event) -> None:
        """Points belong to one segment: picking another segment starts its clicks afresh."""
        seg = caller.GetSegmentationNode()
        current = (seg.GetID() if seg else None, caller.GetSelectedSegmentID())
        previous, self._selected = self._selected, current
        if previous is not None and previous[1] and current != previous:  # not when a first segment is made
            self.clearPoints()

    def clearPoints(self) -> None:
        pn = self.getParameterNode()
        for node in (pn.foregroundPoints, pn.backgroundPoints, pn.extremePoints):
            if node is not None and node.GetNumberOfControlPoints():
                node.RemoveAllControlPoints()

    def _onExtremePointsChanged(self, caller, event) -> None:
        self._notify("onPointsChanged")

    @vtk.calldata_type(vtk.VTK_INT)
    def _onPointDefined(self, caller, event, index=None) -> None:
        """A point was placed. ``index`` is the event's call data: the point placed is not always the last
        one (placing fills the list's first unplaced point). A deferred event (fired by EndModify) has no
        call data: then the last point is taken."""
        if self._ignorePointEvents:
            return
        pn = self.getParameterNode()
        foreground = caller is pn.foregroundPoints
        n = caller.GetNumberOfControlPoints()
        if index is None or not 0 <= index < n:
            index = n - 1
        if index < 0:
            return
        p = [0.0, 0.0, 0.0]
        caller.GetNthControlPointPositionWorld(index, p)
        self.clickAt(p, foreground)

    def addPoint(self, pointList, ras) -> None:
        """Show a point received elsewhere (the Segment Editor effect) without triggering a second click."""
        self._ignorePointEvents = True
        try:
            pointList.AddControlPointWorld(float(ras[0]), float(ras[1]), float(ras[2]))
        finally:
            self._ignorePointEvents = False
