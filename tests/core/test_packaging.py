"""The installed (non-editable) package must hold every subpackage and data file the code uses."""

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _setup_cfg():
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser


def test_every_subpackage_is_listed_in_setup_cfg():
    listed = set(_setup_cfg()["options"]["packages"].split())
    on_disk = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "dcbench_tesla").rglob("__init__.py")}
    assert on_disk <= listed, f"add to setup.cfg [options] packages: {sorted(on_disk - listed)}"
    assert "dcbench_tesla_methods" in listed


def test_presets_ship_as_package_data():
    assert "presets/*.toml" in _setup_cfg()["options.package_data"]["dcbench_tesla"]
    assert list((ROOT / "dcbench_tesla" / "presets").glob("*.toml"))


def test_every_builtin_method_module_has_an_entry_point():
    entry_points = _setup_cfg()["options.entry_points"]["dcbench_tesla.methods"]
    distillers = {p.stem for p in (ROOT / "methods").glob("*_distiller.py")}
    modules = {p.stem for p in (ROOT / "methods").glob("*.py")} - distillers - {"__init__"}
    assert {f"{m}_distiller" for m in modules} == distillers  # every spec module has its distiller, and back
    for module in modules:
        assert f"dcbench_tesla_methods.{module}:" in entry_points, module
