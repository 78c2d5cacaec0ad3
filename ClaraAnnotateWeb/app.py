"""The trame application: Slicer's views and segment editor (trame-slicer) plus Clara's tools.

Page state the tools publish (``clara_*`` keys) is also what the browser tests read: ``clara_status``,
``clara_busy``, ``clara_results`` (count of applied results), ``clara_last`` (the last result's
timings), ``clara_saved`` (the last saved label's record).
"""

from __future__ import annotations

import asyncio
import logging
import re
import tempfile
from pathlib import Path
from typing import Any

from ClaraAnnotateLib import annotator
from ClaraAnnotateLib.settings import BackendSettings
from trame.app import get_server
from trame.widgets import html
from trame.widgets import vuetify3 as v3
from trame_slicer import module as trame_slicer_module
from trame_slicer.app.logic import LayoutButtonLogic, LoadVolumeLogic, VolumePropertyLogic
from trame_slicer.app.logic.segmentation import SegmentEditorLogic
from trame_slicer.app.ui import (
    ControlButton,
    LayoutButton,
    LoadVolumeUI,
    SegmentEditorUI,
    SegmentEditorUndoRedoUI,
    ViewerLayout,
    VolumePropertyUI,
)
from trame_slicer.core import SlicerApp
from trame_slicer.rca_view import register_rca_factories

from .annotation import WebAnnotation, install_scene_globals
from .sources import DEFAULT_TAG

log = logging.getLogger(__name__)
TITLE = "Clara Annotate Web"
#: Image ids the datastore accepts (uploads are stored under one made from the file name).
_ID_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


class ClaraWebApp:
    """One page, one scene: the trame server, the Slicer core and the annotation logic of this process."""

    def __init__(self, settings: BackendSettings, source, *, server_name: str = "clara-web") -> None:
        self.server = get_server(server_name, client_type="vue3")
        self.server.enable_module(trame_slicer_module)
        self.state, self.ctrl = self.server.state, self.server.controller
        self.slicer_app = SlicerApp()
        install_scene_globals(self.slicer_app)
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.source = source
        self.image_id: str | None = None
        self.image_name = ""

        self.editor_logic = SegmentEditorLogic(self.server, self.slicer_app)
        self.volume_logic = VolumePropertyLogic(self.server, self.slicer_app)
        self.layout_logic = LayoutButtonLogic(self.server, self.slicer_app)
        self.load_logic = LoadVolumeLogic(self.server, self.slicer_app)
        self.load_logic.volume_loaded.connect(self._on_uploaded)

        self.annotation = WebAnnotation(self.slicer_app, self._notify)
        self.connection = self.annotation.connect(settings)

        s = self.state
        s.trame__title = TITLE
        s.clara_connection = self._connection_text()
        s.clara_images = []
        s.clara_image = None
        s.clara_tool = None
        s.clara_status, s.clara_status_level = f"Open an image from the {source.description}, or upload one", "info"
        s.clara_busy, s.clara_busy_label = False, ""
        s.clara_results = 0
        s.clara_voxels = 0
        s.clara_points = {}
        s.clara_placing = ""
        s.clara_last = {}
        s.clara_saved = {}
        s.clara_tag = DEFAULT_TAG
        s.clara_click_models = self.annotation.model_names(annotator.CLICK_KINDS)
        pn = self.annotation.logic.getParameterNode()
        s.clara_click_model = pn.clickModel
        s.clara_extreme_models = self.annotation.model_names(annotator.EXTREME_KINDS)
        s.clara_extreme_model = pn.extremeModel
        s.clara_auto_models = self.annotation.model_names(annotator.AUTO_KINDS)
        s.clara_auto_model = pn.autoModel
        s.clara_center_on = None
        s.clara_image_loaded = False
        self.state.change("clara_image")(self._on_image_selected)
        self.state.change("clara_tool")(self._on_tool)
        self.state.change("clara_click_model", "clara_extreme_model", "clara_auto_model")(self._on_models)
        self.state.change("clara_center_on")(self._on_center_on)
        self.ctrl.on_server_ready.add(self._on_ready)
        self._build_ui()
        self.editor_logic.set_ui(self.editor_ui)
        self.volume_logic.set_ui(self.volume_ui)
        self.layout_logic.set_ui(self.layout_button)
        self.load_logic.set_ui(self.upload_ui)

    # ----- page ------------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        with ViewerLayout(self.server, is_drawer_visible=True) as self.layout:
            self.layout.title.set_text(TITLE)
            self.layout.typed_state.data.active_tool = "clara"
            at = self._at = self.layout.typed_state.name.active_tool
            with self.layout.appbar, v3.Template(v_slot_prepend=True):
                v3.VSelect(label="Datastore image", items=("clara_images",), item_title="name", item_value="id",
                           v_model=("clara_image",), density="compact", hide_details=True, variant="outlined",
                           style="min-width: 320px;", classes="mx-2", id="clara-image-select")
                self.upload_ui = LoadVolumeUI()
                v3.VTextField(label="Label tag", v_model=("clara_tag",), density="compact", hide_details=True,
                              variant="outlined", style="max-width: 120px;", classes="mx-2")
                v3.VBtn("Save", id="clara-save", prepend_icon="mdi-content-save", variant="tonal",
                        disabled=("!clara_image_loaded",), click=self.save, classes="mx-1")
                v3.VBtn(".seg.nrrd", id="clara-download", prepend_icon="mdi-download", variant="tonal",
                        classes="mx-1",
                        click=(f"utils.download('segmentation.seg.nrrd', trigger('{self.ctrl.trigger_name(self.download)}'),"
                               " 'application/octet-stream')"))
            with self.layout.drawer:
                self._clara_panel()
                self.editor_ui = SegmentEditorUI(v_if=(f"{at} !== 'volume'",))
                self.volume_ui = VolumePropertyUI(v_if=(f"{at} === 'volume'",))
            with self.layout.toolbar:
                ControlButton(name="Clara tools and segment editor", icon="mdi-auto-fix", classes="mt-1",
                              click=f"{at} = 'clara'", active=(f"{at} !== 'volume'",))
                ControlButton(name="Volume properties", icon="mdi-tune-variant", classes="mt-1",
                              click=f"{at} = 'volume'", active=(f"{at} === 'volume'",))
                self.layout_button = LayoutButton(classes="mt-1")
            with self.layout.undo_redo:
                SegmentEditorUndoRedoUI(editor_ui=self.editor_ui)
            with self.layout.content:
                self.layout_logic.layout_manager.initialize_layout_grid(self.layout)

    def _clara_panel(self) -> None:
        with v3.VCard(variant="flat", classes="pa-2", v_if=(f"{self._at} !== 'volume'",), id="clara-panel"):
            v3.VCardTitle("Clara", classes="text-subtitle-1 pa-1")
            with v3.VBtnToggle(v_model=("clara_tool",), density="compact", divided=True, variant="outlined",
                               classes="mb-2"):
                v3.VBtn("fg", value="foreground", prepend_icon="mdi-plus-circle", id="clara-tool-foreground",
                        color="green")
                v3.VBtn("bg", value="background", prepend_icon="mdi-minus-circle", id="clara-tool-background",
                        color="red")
                v3.VBtn("{{ (clara_points.extreme || 0) }}/6 pts", value="extreme", prepend_icon="mdi-vector-square", id="clara-tool-extreme",
                        color="amber")
            with html.Div(classes="d-flex flex-wrap ga-1 mb-2"):
                v3.VBtn("Auto-segment", id="clara-auto", size="small", variant="tonal", click=self.annotation.auto_segment)
                v3.VBtn("Undo", id="clara-undo", size="small", variant="tonal", prepend_icon="mdi-undo",
                        click=self.annotation.undo)
                v3.VBtn("Clear", id="clara-clear", size="small", variant="tonal", prepend_icon="mdi-close",
                        click=self.annotation.clear)
            v3.VSelect(label="Click model", items=("clara_click_models",), v_model=("clara_click_model",),
                       density="compact", hide_details=True, classes="mb-1")
            v3.VSelect(label="Extreme-point model", items=("clara_extreme_models",), v_model=("clara_extreme_model",),
                       density="compact", hide_details=True, classes="mb-1")
            v3.VSelect(label="Auto-segmentation model", items=("clara_auto_models",), v_model=("clara_auto_model",),
                       density="compact", hide_details=True, classes="mb-1")
            v3.VProgressLinear(indeterminate=True, v_show=("clara_busy",), color="primary")
            html.Div("{{ clara_busy ? clara_busy_label + '...' : clara_status }}", id="clara-status",
                     classes=("clara_status_level === 'error' ? 'text-error text-caption' : 'text-caption'",))
            html.Div("{{ clara_connection }}", classes="text-caption text-medium-emphasis")
        v3.VDivider()

    def _connection_text(self) -> str:
        c = self.connection
        where = "in-process engine" if c.mode == "local" else f"annotation server {c.url}"
        return f"{where}, API {c.api_version}, {len(c.models)} model(s); {self.source.description}"

    # ----- events --------------------------------------------------------------------------------
    def _notify(self, event: str, **data: Any) -> None:
        s = self.state
        if event == "status":
            s.clara_status, s.clara_status_level = data["message"], data["level"]
        elif event == "busy":
            s.clara_busy, s.clara_busy_label = data["flag"], data["label"]
        elif event == "points":
            s.clara_points = dict(data["counts"])
        elif event == "voxels":
            s.clara_voxels = int(data["count"])
        elif event == "result":
            s.clara_results = int(s.clara_results or 0) + 1
            s.clara_last = {**{k: (round(v, 4) if isinstance(v, float) else v) for k, v in data.items()},
                            "voxels": s.clara_voxels}
            log.info("%s: %.3f s (engine %.3f s)", data["what"], data["seconds"], data["engine_seconds"])
        s.flush()

    async def _poll(self) -> None:
        while True:
            try:
                self.annotation.poll()
            except Exception:  # a callback failed: keep serving, say so
                log.exception("delivering a result failed")
            await asyncio.sleep(0.01 if self.annotation.busy else 0.05)

    def _on_ready(self, **_kwargs) -> None:
        self._poll_task = asyncio.ensure_future(self._poll())
        self.refresh_images()

    def refresh_images(self) -> None:
        try:
            self.state.clara_images = self.source.images()
        except Exception as e:
            self._notify("status", message=annotator.user_message(e, "Listing the datastore"), level="error")

    def _on_image_selected(self, clara_image=None, **_kwargs) -> None:
        if clara_image and clara_image != self.image_id:
            self.open_image(clara_image)

    def open_image(self, image_id: str) -> None:
        try:
            path = self.source.image_file(image_id)
        except Exception as e:
            self._notify("status", message=annotator.user_message(e, "Opening the image"), level="error")
            return
        name = next((i["name"] for i in self.state.clara_images or [] if i["id"] == image_id), image_id)
        self._show_volume_file(path, image_id, name)

    def _show_volume_file(self, path, image_id: str | None, name: str) -> None:
        self.slicer_app.scene.Clear()
        volumes = self.slicer_app.io_manager.load_volumes([str(path)])
        if not volumes:
            self._notify("status", message=f"Could not read {Path(path).name} as a volume", level="error")
            return
        self.slicer_app.display_manager.show_volume(volumes[0], do_reset_views=True)
        self._volume_ready(volumes[0], image_id, name)

    def _on_uploaded(self, volume_node) -> None:
        """A file the user uploaded (trame-slicer's Open Files): saving stores it in the datastore first."""
        self._volume_ready(volume_node, None, volume_node.GetName())

    def _volume_ready(self, volume_node, image_id: str | None, name: str) -> None:
        self.image_id, self.image_name = image_id, name
        self.annotation.on_scene_reset()
        self.editor_logic.on_volume_changed(volume_node)
        self.volume_logic.on_volume_changed(volume_node)
        with self.state:
            self.state.clara_image = image_id
            self.state.clara_tool = None
            self.layout.typed_state.data.is_volume_loaded = True
            self.state.clara_image_loaded = True
        self._notify("status", message=f"Opened {name}: place foreground points (fg) in a view", level="ok")

    def _on_tool(self, clara_tool=None, **_kwargs) -> None:
        try:
            self.annotation.set_tool(clara_tool or "")
        except Exception as e:
            self._notify("status", message=annotator.user_message(e, "Tool"), level="error")
            return
        self.state.clara_placing = clara_tool or ""  # the views place this tool's points from now on

    def _on_models(self, clara_click_model=None, clara_extreme_model=None, clara_auto_model=None, **_kwargs) -> None:
        self.annotation.set_models(clara_click_model or "", clara_extreme_model or "", clara_auto_model or "")

    def _on_center_on(self, clara_center_on=None, **_kwargs) -> None:
        """Centre every slice view on a world RAS point (``[r, a, s]``): what the tests and the benchmark
        use to bring a structure under a known pixel."""
        import slicer

        if not clara_center_on:
            return
        try:
            r, a, s = (float(v) for v in clara_center_on)
        except (TypeError, ValueError):
            self._notify("status", message="centre on: expected [r, a, s] in millimetres", level="error")
            return
        slicer.vtkMRMLSliceNode.JumpAllSlices(self.slicer_app.scene, r, a, s, slicer.vtkMRMLSliceNode.CenteredJumpSlice)

    # ----- save and download -----------------------------------------------------------------------
    def _upload_id(self) -> str:
        name = re.sub(r"(\.nii\.gz|\.nii|\.nrrd|\.nhdr|\.mha|\.mhd|\.dcm)$", "", self.image_name or "", flags=re.I)
        base = _ID_CHARS.sub("_", name or "upload").strip("._-")[:60] or "upload"
        taken = {i["id"] for i in self.source.images()}
        n, candidate = 1, base
        while candidate in taken:
            n += 1
            candidate = f"{base}_{n}"
        return candidate

    def save(self) -> None:
        """The segmentation as a new label version in the datastore (an uploaded image is stored first)."""
        from ClaraAnnotateLib import nodes

        from claraseg.server.datastore import check_id

        try:
            tag = check_id(str(self.state.clara_tag or DEFAULT_TAG), "label tag")
            label, names = self.annotation.labelmap()
            if self.image_id is None:
                image = nodes.image_from_volume(self.annotation.volume())
                image_id = self._upload_id()
                self.source.add_image(image_id, image, name=self.image_name)
                self.image_id = image_id
                self.refresh_images()
                self.state.clara_image = image_id
            record = self.source.save_label(self.image_id, label, names, tag=tag)
        except Exception as e:
            self._notify("status", message=annotator.user_message(e, "Saving"), level="error")
            return
        self.state.clara_saved = {k: record.get(k) for k in ("image", "tag", "version", "values", "label_names")}
        self._notify("status", message=f"Saved {record['image']} / {record['tag']} version {record['version']}",
                     level="ok")

    def download(self):
        """The segmentation as Slicer's ``.seg.nrrd`` (Slicer's own writer)."""
        node = self.slicer_app.segmentation_editor.active_segmentation_node
        if node is None:
            self._notify("status", message="Nothing to download: open an image and segment it first", level="error")
            return None
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "segmentation.seg.nrrd"
            self.slicer_app.io_manager.write_segmentation(node, out)
            return self.server.protocol.addAttachment(out.read_bytes())

    def start(self, host: str, port: int, **kwargs) -> None:
        self.server.start(host=host, port=port, open_browser=False, show_connection_info=False, **kwargs)
