"""What CI can check of the Slicer modules without Slicer: every module file byte-compiles and is
ruff-clean; every .ui file is valid Qt Designer XML holding every widget the code looks up; every
script and resource is listed in the module's CMakeLists (only listed files ship); the pure Lib modules
import without Slicer, the MRML ones with Slicer's libraries but without Qt, the desktop ones need Qt; the
extension CMakeLists follows Slicer's template."""

from __future__ import annotations

import ast
import os
import py_compile
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = ["ClaraAnnotate", "ClaraTrainModule"]
PY_FILES = sorted(p for m in MODULES for p in (ROOT / m).rglob("*.py")) + sorted((ROOT / "Testing").rglob("*.py"))
#: Which .ui file each code file's ``self.ui.<name>`` refers to.
UI_OF = {
    ROOT / "ClaraAnnotate" / "ClaraAnnotate.py": ROOT / "ClaraAnnotate" / "Resources" / "UI" / "ClaraAnnotate.ui",
    ROOT / "ClaraAnnotate" / "SegmentEditorClaraLib" / "SegmentEditorEffect.py":
        ROOT / "ClaraAnnotate" / "Resources" / "UI" / "SegmentEditorClara.ui",
    ROOT / "ClaraTrainModule" / "ClaraTrainModule.py": ROOT / "ClaraTrainModule" / "Resources" / "UI" / "ClaraTrainModule.ui",
}
#: Lib modules that need Slicer's MRML libraries (slicer-core is enough: no Qt).
NEEDS_MRML = {"ClaraAnnotateLib.nodes", "ClaraAnnotateLib.interaction", "ClaraAnnotateLib.pointlists",
              "ClaraTrainModuleLib.export", "ClaraTrainModuleLib.plots", "ClaraTrainModuleLib.trainer"}
#: Lib modules that need Slicer's desktop application (Qt); everything else must import without Slicer.
NEEDS_QT = {"ClaraAnnotateLib.desktop", "ClaraTrainModuleLib.desktop"}


@pytest.mark.parametrize("path", PY_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_byte_compiles(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / "x.pyc"), doraise=True)
    ast.parse(path.read_text(), str(path), feature_version=(3, 9))  # Slicer's Python: no newer syntax


def test_ruff_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed")
    r = subprocess.run([ruff, "check", *MODULES, "Testing", "tests/slicer"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def ui_names(path: Path) -> set[str]:
    tree = ET.parse(path)
    root = tree.getroot()
    assert root.tag == "ui" and root.get("version") == "4.0"
    assert root.find("class") is not None and root.find("widget") is not None
    customs = {c.findtext("class") for c in root.iter("customwidget")}
    for w in root.iter("widget"):  # every Slicer/CTK widget used is declared for Designer
        if w.get("class", "").startswith(("q", "ctk")):
            assert w.get("class") in customs, f"{path.name}: {w.get('class')} not in <customwidgets>"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), f"{path.name}: duplicate widget names"
    return set(names)


@pytest.mark.parametrize("code", sorted(UI_OF), ids=lambda p: p.name)
def test_ui_has_every_widget_the_code_uses(code):
    names = ui_names(UI_OF[code])
    used = set(re.findall(r"self\.ui\.([A-Za-z_][A-Za-z0-9_]*)", code.read_text()))
    assert used, f"{code.name} looks up no widgets"
    missing = sorted(used - names)
    assert not missing, f"{code.name} uses widgets missing from {UI_OF[code].name}: {missing}"
    assert "loadUI" in code.read_text()


def test_mrml_scene_reaches_the_mrml_widgets():
    root = ET.parse(UI_OF[ROOT / "ClaraAnnotate" / "ClaraAnnotate.py"]).getroot()
    receivers = {c.findtext("receiver") for c in root.iter("connection") if "mrmlSceneChanged" in c.findtext("signal")}
    assert {"foregroundPlaceWidget", "backgroundPlaceWidget", "extremePlaceWidget",
            "embeddedSegmentEditorWidget"} <= receivers


@pytest.mark.parametrize("module", MODULES)
def test_cmake_lists_every_script_and_resource(module):
    folder = ROOT / module
    text = (folder / "CMakeLists.txt").read_text()
    listed = {line.strip().replace("${MODULE_NAME}", module) for line in text.splitlines()
              if line.strip().endswith((".py", ".png", ".ui", ".txt")) and not line.strip().startswith("#")}
    shipped = {str(p.relative_to(folder)) for p in folder.rglob("*")
               if p.is_file() and p.suffix in (".py", ".png", ".ui") and "Testing" not in p.parts
               and "__pycache__" not in p.parts}
    shipped |= {str(p.relative_to(folder)) for p in (folder / "Resources").glob("*.txt")}
    assert shipped == listed, f"not listed: {sorted(shipped - listed)}; listed but missing: {sorted(listed - shipped)}"
    for needed in ("slicerMacroBuildScriptedModule(", "WITH_GENERIC_TESTS", "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)"):
        assert needed in text


def test_extension_cmakelists_follows_the_template():
    text = (ROOT / "CMakeLists.txt").read_text()
    for needed in ("project(ClaraForSlicer)", 'set(EXTENSION_CATEGORY "Segmentation")', "find_package(Slicer REQUIRED)",
                   "include(${Slicer_USE_FILE})", "add_subdirectory(ClaraAnnotate)", "add_subdirectory(ClaraTrainModule)",
                   "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})",
                   "ctkMacroCompilePythonScript(", "claraseg/*.py"):
        assert needed in text, needed
    for var in ("HOMEPAGE", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert f"set(EXTENSION_{var} " in text
    assert (ROOT / "Resources" / "ClaraForSlicer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_module_files_have_the_four_classes_and_register_the_effect():
    for module in MODULES:
        tree = ast.parse((ROOT / module / f"{module}.py").read_text())
        classes = {n.name: [getattr(b, "id", getattr(b, "attr", "")) for b in n.bases]
                   for n in tree.body if isinstance(n, ast.ClassDef)}
        assert "ScriptedLoadableModule" in classes[module]
        assert "ScriptedLoadableModuleWidget" in classes[module + "Widget"]
        assert "VTKObservationMixin" in classes[module + "Widget"]
        assert "ScriptedLoadableModuleLogic" in classes[module + "Logic"]
        assert "ScriptedLoadableModuleTest" in classes[module + "Test"]
    annotate = (ROOT / "ClaraAnnotate" / "ClaraAnnotate.py").read_text()
    assert 'slicer.app.connect("startupCompleted()", registerEditorEffect)' in annotate
    assert "@parameterNodeWrapper" in annotate
    effect = ast.parse(UI_OF.__iter__().__next__().parent.joinpath("SegmentEditorClaraLib", "SegmentEditorEffect.py")
                       .read_text())
    cls = next(n for n in effect.body if isinstance(n, ast.ClassDef) and n.name == "SegmentEditorEffect")
    methods = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
    assert {"clone", "icon", "helpText", "setupOptionsFrame", "processInteractionEvents", "activate"} <= methods


def _lib_modules() -> list[str]:
    return sorted(f"{lib}.{p.stem}" for m, lib in (("ClaraAnnotate", "ClaraAnnotateLib"), ("ClaraTrainModule", "ClaraTrainModuleLib"))
                  for p in (ROOT / m / lib).glob("*.py") if p.stem != "__init__")


def _run(code: str, hide_slicer: bool):
    """Run ``code`` in a fresh interpreter that sees the module folders and claraseg; ``hide_slicer``:
    as if slicer-core and VTK were not installed (Slicer's modules and VTK cannot be imported)."""
    prelude = "import sys\n" + ("for k in ('slicer', 'vtk', 'vtkmodules'): sys.modules[k] = None\n" if hide_slicer else "")
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True,
                          env={"PYTHONPATH": os.pathsep.join([*(str(ROOT / m) for m in MODULES), str(ROOT)]),
                               "PATH": "/usr/bin:/bin"})


def test_lib_modules_fall_into_pure_mrml_and_desktop():
    mods = _lib_modules()
    assert set(mods) >= NEEDS_MRML | NEEDS_QT
    pure = [m for m in mods if m not in NEEDS_MRML | NEEDS_QT]
    assert len(pure) >= 10
    # The pure modules import without Slicer, Qt, VTK or torch; the MRML ones fail on a Slicer module
    # instead of half-working.
    r = _run("import importlib\n"
             f"for m in {pure!r}: importlib.import_module(m)\n"
             "bad = sorted(k for k in ('slicer', 'qt', 'vtk', 'ctk', 'torch') if sys.modules.get(k) is not None)\n"
             "assert not bad, bad\n"
             f"for m in {sorted(NEEDS_MRML | NEEDS_QT)!r}:\n"
             "    try:\n"
             "        importlib.import_module(m)\n"
             "    except ImportError as e:\n"
             "        assert e.name in ('slicer', 'qt', 'vtk') or 'slicer' in str(e), (m, e)\n"
             "    else:\n"
             "        raise AssertionError(m + ' imported without Slicer')\n", hide_slicer=True)
    assert r.returncode == 0, r.stderr


def test_mrml_lib_modules_import_on_slicer_core_without_qt(slicer_app):
    """What the web app and these tests use runs on Slicer's libraries without Qt; the desktop parts
    fail on Qt, not on something else."""
    r = _run("import importlib\n"
             f"for m in {sorted(NEEDS_MRML)!r}: importlib.import_module(m)\n"
             "assert 'qt' not in sys.modules, 'Qt was imported'\n"
             f"for m in {sorted(NEEDS_QT)!r}:\n"
             "    try:\n"
             "        importlib.import_module(m)\n"
             "    except ImportError as e:\n"
             "        assert e.name == 'qt', (m, e)\n"
             "    else:\n"
             "        raise AssertionError(m + ' imported without Qt')\n", hide_slicer=False)
    assert r.returncode == 0, r.stderr


def _logic_signatures() -> dict[str, ast.arguments]:
    """Public methods of the shared annotation logic (``InteractionLogic``) by name."""
    tree = ast.parse((ROOT / "ClaraAnnotate" / "ClaraAnnotateLib" / "interaction.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "InteractionLogic")
    return {n.name: n.args for n in cls.body if isinstance(n, ast.FunctionDef)}


@pytest.mark.parametrize("caller", [ROOT / "ClaraAnnotate" / "SegmentEditorClaraLib" / "SegmentEditorEffect.py",
                                    ROOT / "ClaraAnnotate" / "ClaraAnnotate.py"], ids=lambda p: p.name)
def test_calls_into_the_shared_logic_match_its_signatures(caller):
    """Without Slicer nothing runs this glue: every ``self.logic.<method>(...)`` call names a method of
    InteractionLogic with parameters it has (the effect passes its own editor node and undo)."""
    sigs = _logic_signatures()
    calls = [n for n in ast.walk(ast.parse(caller.read_text())) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Attribute)
             and n.func.value.attr == "logic" and n.func.attr in sigs]
    assert calls, f"{caller.name} calls nothing of the shared logic"
    for call in calls:
        args = sigs[call.func.attr]
        params = [a.arg for a in args.args][1:]  # without self
        assert len(call.args) <= len(params), f"{caller.name}:{call.lineno}: too many arguments to {call.func.attr}"
        for kw in call.keywords:
            assert kw.arg in params, f"{caller.name}:{call.lineno}: {call.func.attr}() has no parameter {kw.arg}"
    effect_calls = {c.func.attr: c for c in calls}
    if caller.name == "SegmentEditorEffect.py":  # the effect works on its own editor's node, not the module's
        # (its clicks go through ClaraAnnotateLib.effect.place_click, run on real MRML in test_mrml_interaction)
        for name in ("runExtremePoints", "runAutoSegment", "refineFromSegment", "undoObject", "clearObject"):
            c = effect_calls[name]
            positional = [a.arg for a in sigs[name].args][1:len(c.args) + 1]
            assert "editorNode" in positional + [k.arg for k in c.keywords], f"{name} gets no editorNode"
