"""Packaging checks: the wheel ships the npe2 manifest, npe2 finds and validates the
plugin, and the Qt-free core really imports no GUI toolkit."""

from __future__ import annotations

import configparser
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

DIST_NAME = "napari-infection-clock"
PKG = "napari_infection_clock"
ENTRY_POINT = f"{PKG}:napari.yaml"


def _build_wheel(repo_root: str, outdir: Path) -> Path:
    """Build a wheel of the checkout into ``outdir``.

    With hatchling installed in the test environment the build runs offline
    (``--no-build-isolation``); otherwise ``python -m build`` builds it in an
    isolated environment (fetches hatchling from the package index).
    """
    if importlib.util.find_spec("hatchling") is not None:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(outdir),
            repo_root,
        ]
    else:
        cmd = [sys.executable, "-m", "build", "--wheel", "--outdir", str(outdir), repo_root]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    wheels = sorted(outdir.glob("napari_infection_clock-*.whl"))
    assert len(wheels) == 1, list(outdir.iterdir())
    return wheels[0]


@pytest.fixture(scope="module")
def wheel(repo_root, tmp_path_factory) -> Path:
    return _build_wheel(repo_root, tmp_path_factory.mktemp("wheel"))


def test_wheel_ships_manifest(wheel, repo_root):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        manifest_name = f"{PKG}/napari.yaml"
        assert manifest_name in names, names
        shipped = zf.read(manifest_name).decode()
    top_level = Path(repo_root, "napari.yaml").read_text()
    assert shipped == top_level, "wheel's napari.yaml differs from the top-level napari.yaml"


def test_wheel_declares_entry_point(wheel):
    with zipfile.ZipFile(wheel) as zf:
        ep_files = [n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt")]
        assert len(ep_files) == 1, zf.namelist()
        text = zf.read(ep_files[0]).decode()
    parser = configparser.ConfigParser()
    parser.optionxform = str  # keep case
    parser.read_string(text)
    assert parser.has_section("napari.manifest"), text
    assert parser["napari.manifest"].get(DIST_NAME) == ENTRY_POINT, text


def test_npe2_discovers_installed_plugin():
    from npe2 import PluginManager

    pm = PluginManager()  # fresh instance: no global state shared with other tests
    pm.discover()
    manifest = pm.get_manifest(DIST_NAME)
    assert manifest.name == DIST_NAME


def test_npe2_manifest_from_distribution_and_validate():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution(DIST_NAME)
    assert manifest.name == DIST_NAME
    # the CLI also checks that every python_name in the manifest imports and exists
    proc = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", DIST_NAME, "--imports"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "QT_API": os.environ.get("QT_API", "pyqt6")},
    )
    assert proc.returncode == 0, f"npe2 validate failed:\n{proc.stdout}\n{proc.stderr}"


# A fresh interpreter imports every module of each package in turn and reports, per module,
# which GUI modules appeared in sys.modules. The core goes first, so its report is that of a
# fresh interpreter; the command line's modules then add what they pull in themselves.
_IMPORT_PROBE = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys
    pkg_names, banned = sys.argv[1].split(","), tuple(sys.argv[2].split(","))

    def gui_loaded():
        return {m.split(".")[0] for m in list(sys.modules)} & set(banned)

    reports = {}
    seen = gui_loaded()
    for pkg_name in pkg_names:
        report = reports[pkg_name] = {"modules": [], "offenders": {}}
        pkg = importlib.import_module(pkg_name)
        names = [pkg_name]
        if hasattr(pkg, "__path__"):
            names += [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg_name + ".")]
        if gui_loaded() - seen:
            report["offenders"][pkg_name] = sorted(gui_loaded() - seen)
        seen = gui_loaded()
        for name in names:
            importlib.import_module(name)
            now = gui_loaded()
            if now - seen:
                report["offenders"][name] = sorted(now - seen)
            seen = now
            report["modules"].append(name)
    print(json.dumps(reports))
    """
)


@pytest.fixture(scope="module")
def import_reports(gui_modules) -> dict:
    """What importing the core, then the command line, pulled in: one interpreter for both
    (each start imports torch, scipy and matplotlib: seconds)."""
    packages = [f"{PKG}.core"]
    if importlib.util.find_spec(f"{PKG}.cli") is not None:
        packages.append(f"{PKG}.cli")
    env = {k: v for k, v in os.environ.items() if k != "QT_API"}
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE, ",".join(packages), ",".join(gui_modules)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert proc.returncode == 0, f"importing {packages} failed:\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_core_imports_no_gui(import_reports):
    report = import_reports[f"{PKG}.core"]
    assert f"{PKG}.core" in report["modules"]
    assert not report["offenders"], (
        "Qt-free core pulled in GUI modules (module -> new GUI modules):\n"
        + json.dumps(report["offenders"], indent=2)
    )


def test_cli_imports_no_gui(import_reports):
    if f"{PKG}.cli" not in import_reports:
        pytest.skip(f"{PKG}.cli does not exist yet")
    # the core's modules were imported first, so a GUI module one of them pulled in was
    # counted there: it fails this test too (the command line is built on the core)
    offenders = {**import_reports[f"{PKG}.core"]["offenders"],
                 **import_reports[f"{PKG}.cli"]["offenders"]}
    assert f"{PKG}.cli" in import_reports[f"{PKG}.cli"]["modules"]
    assert not offenders, (
        "the command line pulled in GUI modules (module -> new GUI modules):\n"
        + json.dumps(offenders, indent=2)
    )


#: The oldest release of each dependency that has what the code calls (or, for numpy 2's
#: ABI, a build that imports under numpy 2): pip may pick any version above the floor.
NEEDED_FLOORS = {
    "numpy": "2.0",  # np.quantile(weights=..., method="inverted_cdf") in core/clock.py
    "scipy": "1.15",  # stats.bootstrap(rng=...) in core/clock.py
    "torch": "2.6",  # serialization.safe_globals with (object, "module.name") tuples
    "torchvision": "0.21",  # the release paired with torch 2.6
    "pandas": "2.2.2",  # first release built for numpy 2
    "scikit-learn": "1.4.2",  # first release built for numpy 2
    "matplotlib": "3.8.4",  # first release built for numpy 2
}


def test_dependency_floors_have_the_apis_used(repo_root):
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement
    from packaging.version import Version

    with open(Path(repo_root, "pyproject.toml"), "rb") as fh:
        deps = tomllib.load(fh)["project"]["dependencies"]
    floors = {}
    for dep in map(Requirement, deps):
        floors[dep.name] = [Version(s.version) for s in dep.specifier if s.operator == ">="]
    too_low = {
        name: (floors.get(name), need)
        for name, need in NEEDED_FLOORS.items()
        if not floors.get(name) or max(floors[name]) < Version(need)
    }
    assert not too_low, f"floors below what the code needs (floor, needed): {too_low}"


@pytest.mark.skipif(not hasattr(os, "RTLD_DEEPBIND"), reason="triton is imported plainly here")
def test_package_imports_when_triton_fails_to_load(tmp_path):
    """A triton that raises something other than ImportError on import (a broken driver, a
    CUDA mismatch) must not stop the plugin from loading, and the dlopen flags come back."""
    fake = tmp_path / "triton"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise RuntimeError('no usable CUDA driver')\n")
    code = (
        "import sys; before = sys.getdlopenflags(); import napari_infection_clock; "
        "assert sys.getdlopenflags() == before; assert 'triton' not in sys.modules"
    )
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(not hasattr(os, "RTLD_DEEPBIND"), reason="triton is imported plainly here")
def test_package_loads_tritons_library_alone():
    """The package binds triton's library to itself before torch can load it, and leaves
    triton's Python modules to torch: importing them (50 kernels' sources parsed) was
    0.23 s of the first dock's opening, or of File > Open, on napari's GUI thread."""
    pytest.importorskip("triton")
    code = (
        "import sys; before = sys.getdlopenflags(); import napari_infection_clock; "
        "maps = open('/proc/self/maps').read(); "
        "print('triton' in sys.modules, 'libtriton' in maps, sys.getdlopenflags() == before)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True", "True"], proc.stdout
