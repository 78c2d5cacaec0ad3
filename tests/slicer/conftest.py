"""The Slicer modules' pure-Python packages are imported from the module folders, as Slicer does."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIRS = [ROOT / "ClaraAnnotate", ROOT / "ClaraTrainModule"]
for d in MODULE_DIRS:
    if str(d) not in sys.path:
        sys.path.insert(0, str(d))


SERVER_TESTS = ROOT / "tests" / "server"
TOKEN = "tok-123456789012"


@pytest.fixture(scope="session")
def standin_server(tmp_path_factory):
    """A real ``claraseg serve`` on 127.0.0.1 hosting the server tests' deterministic stand-in backend."""
    if not (SERVER_TESTS / "standin.py").exists():
        pytest.skip("tests/server/standin.py (the server tests' stand-in backend) is missing")
    from claraseg.server.testing import ServerProcess

    tmp = tmp_path_factory.mktemp("standin-server")
    srv = ServerProcess(["--backend", "standin:make"], tmp / "datastore", tmp / "server.log",
                        env={"PYTHONPATH": str(SERVER_TESTS)}, token=TOKEN)
    yield srv
    srv.stop()


# ----- Slicer's real MRML libraries (slicer-core, through trame-slicer) ---------------------------------------
def _slicer_core_missing() -> str | None:
    try:
        import slicer  # noqa: F401
        from trame_slicer.core import SlicerApp  # noqa: F401
    except ImportError as e:
        return f"slicer-core/trame-slicer is not installed ({e}); pip install -e '.[slicer]'"
    return None


@pytest.fixture(scope="session")
def slicer_app():
    """One Slicer application core for the session, built by trame-slicer's ``SlicerApp``: a real MRML scene
    with the application logic, colour tables and the Volumes, Markups, Terminologies, Segmentations,
    Subject Hierarchy and Data module logics registered, no Qt. ``slicer.mrmlScene`` and ``slicer.modules``
    point at it for the tests' own use of ``slicer.util`` (the Lib code never reads them)."""
    why = _slicer_core_missing()
    if why:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI installs the slicer extra: {why}")
        pytest.skip(why)
    import types

    import slicer
    from trame_slicer.core import SlicerApp

    app = SlicerApp()
    saved = {k: getattr(slicer, k) for k in ("mrmlScene", "modules") if hasattr(slicer, k)}
    slicer.mrmlScene = app.scene
    slicer.modules = types.SimpleNamespace(**{
        name: types.SimpleNamespace(logic=(lambda lg=logic: lg)) for name, logic in
        (("segmentations", app.segmentations_logic), ("volumes", app.volumes_logic),
         ("markups", app.markups_logic._logic), ("subjecthierarchy", app.subject_hierarchy_logic))})
    yield app
    for k in ("mrmlScene", "modules"):
        if k in saved:
            setattr(slicer, k, saved[k])
        elif hasattr(slicer, k):
            delattr(slicer, k)


@pytest.fixture
def scene(slicer_app):
    """The application's scene, cleared after each test (singletons such as the interaction node stay)."""
    yield slicer_app.scene
    slicer_app.scene.Clear(0)


class SceneBuilder:
    """Nodes as a user's scene holds them, built with the real MRML classes."""

    def __init__(self, scene) -> None:
        self.scene = scene

    def volume(self, array_kji, ijk_to_ras=None, name: str = "volume", labelmap: bool = False):
        import numpy as np
        import slicer
        import vtk

        node = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode", name)
        node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(np.eye(4) if ijk_to_ras is None else np.asarray(ijk_to_ras, float)))
        slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array_kji))
        node.CreateDefaultDisplayNodes()
        assert isinstance(node.GetImageData(), vtk.vtkImageData)
        return node

    def image_volume(self, image, name: str = "volume", labelmap: bool = False):
        """A volume node from a claraseg Image (same voxels and world geometry)."""
        return self.volume(image.array, image.ijk_to_ras, name, labelmap)

    def segmentation(self, volume, name: str = "segmentation", segments=()):
        node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        node.CreateDefaultDisplayNodes()
        node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        ids = [node.GetSegmentation().AddEmptySegment("", s, [0.5, 0.5, 0.5]) for s in segments]
        return (node, *ids) if ids else node

    def editor_node(self, volume, segmentation, segment_id=""):
        node = self.scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        node.SetAndObserveSourceVolumeNode(volume)
        node.SetAndObserveSegmentationNode(segmentation)
        node.SetSelectedSegmentID(segment_id)
        return node

    def linear_transform(self, matrix, parent=None):
        import numpy as np
        import slicer

        node = self.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(np.asarray(matrix, float)))
        if parent is not None:
            node.SetAndObserveTransformNodeID(parent.GetID())
        return node

    def warp_transform(self, shift_mm: float = 4.0, parent=None):
        """A non-linear (thin-plate spline) transform: corners fixed, the centre moved by ``shift_mm``."""
        import itertools

        import vtk

        src, dst = vtk.vtkPoints(), vtk.vtkPoints()
        for c in itertools.product((-300.0, 300.0), repeat=3):
            src.InsertNextPoint(c)
            dst.InsertNextPoint(c)
        src.InsertNextPoint(0, 0, 0)
        dst.InsertNextPoint(shift_mm, -shift_mm / 2, shift_mm / 3)
        tps = vtk.vtkThinPlateSplineTransform()
        tps.SetSourceLandmarks(src)
        tps.SetTargetLandmarks(dst)
        tps.SetBasisToR()
        node = self.scene.AddNewNodeByClass("vtkMRMLTransformNode")
        node.SetAndObserveTransformToParent(tps)
        if parent is not None:
            node.SetAndObserveTransformNodeID(parent.GetID())
        return node


@pytest.fixture
def build(scene) -> SceneBuilder:
    return SceneBuilder(scene)


@pytest.fixture
def build_in_app(slicer_app) -> SceneBuilder:
    """A builder on the application's scene that leaves the scene as it is after the test (for tests that
    share module-scoped nodes, such as the loaded sample CT)."""
    return SceneBuilder(slicer_app.scene)
