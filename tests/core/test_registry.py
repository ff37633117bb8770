import warnings

import pytest

from dcbench_tesla.errors import UserError
from dcbench_tesla.registry import Registry, load_target


def test_register_and_get_with_decorator():
    reg: Registry[object] = Registry("widget")

    @reg.register("alpha")
    def alpha():
        return 1

    assert reg.get("alpha") is alpha
    assert reg.names() == ["alpha"]
    assert "alpha" in reg


def test_lazy_target_is_imported_on_first_lookup_only():
    reg: Registry[object] = Registry("widget")
    reg.register_lazy("dumps", "json:dumps")
    assert reg.names() == ["dumps"]
    import json

    assert reg.get("dumps") is json.dumps


def test_duplicate_names_raise():
    reg: Registry[int] = Registry("widget")
    reg.register("a", 1)
    with pytest.raises(ValueError, match="duplicate widget name 'a'"):
        reg.register("a", 2)
    with pytest.raises(ValueError, match="duplicate"):
        reg.register_lazy("a", "json:dumps")


def test_unknown_name_suggests_close_matches_and_lists_all():
    reg: Registry[int] = Registry("method")
    for name in ("tesla", "tesla-exact", "mtt"):
        reg.register(name, 0)
    with pytest.raises(UserError) as info:
        reg.get("telsa")
    message = str(info.value)
    assert "unknown method 'telsa'" in message
    assert "Did you mean 'tesla'" in message
    assert "Available: mtt, tesla, tesla-exact" in message


def test_broken_lazy_target_raises_user_error_naming_it_and_ls_warns():
    from dcbench_tesla.cli.ls import describe

    reg: Registry[object] = Registry("method")
    reg.register_lazy("broken", "no_such_module_xyz:thing")
    reg.register("fine", 1)
    with pytest.raises(UserError, match="'broken' could not be loaded from 'no_such_module_xyz:thing'"):
        reg.get("broken")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = describe(reg, "broken")
    assert line.startswith("BROKEN:") and "no_such_module_xyz" in line
    assert any("broken" in str(w.message) for w in caught)
    assert reg.get("fine") == 1


def test_load_target_rejects_malformed_targets():
    with pytest.raises(ValueError, match="module:attr"):
        load_target("json.dumps")


def test_unregister():
    reg: Registry[int] = Registry("widget")
    reg.register("a", 1)
    reg.unregister("a")
    assert reg.names() == []
    with pytest.raises(KeyError):
        reg.unregister("a")
