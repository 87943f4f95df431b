import pytest

from streamfuse.registry import available, build, lookup, register


def test_register_build_and_list():
    @register("test-kind", "triple")
    def _triple(x: int, scale: int = 3) -> int:
        return x * scale

    assert build("test-kind", "triple", x=2, scale=None) == 6  # None kwargs are dropped
    assert available("test-kind") == ["triple"]


def test_duplicate_and_unknown_names_raise():
    @register("test-kind2", "a")
    def _a() -> int:
        return 1

    with pytest.raises(ValueError, match="already registered"):
        register("test-kind2", "a")(_a)
    with pytest.raises(ValueError, match="available: a"):
        lookup("test-kind2", "b")


def test_register_hands_the_factory_back_so_the_decorated_name_still_works():
    @register("test-kind3", "seven")
    def _seven() -> int:
        return 7

    assert _seven() == 7


def test_build_drops_only_none_not_other_false_values():
    @register("test-kind4", "echo")
    def _echo(x: int = 1, flag: bool = True, label: str = "n") -> tuple:
        return x, flag, label

    assert build("test-kind4", "echo", x=0, flag=False, label="") == (0, False, "")


def test_names_are_listed_sorted_and_an_unknown_kind_is_a_value_error():
    for name in ("zeta", "alpha"):
        register("test-kind5", name)(lambda: None)
    assert available("test-kind5") == ["alpha", "zeta"]
    with pytest.raises(ValueError, match=r"^unknown test-kind5 'beta'; available: alpha, zeta$"):
        lookup("test-kind5", "beta")
    with pytest.raises(ValueError, match=r"^unknown test-kind-never 'x'; available: none$"):
        lookup("test-kind-never", "x")


def test_a_factory_may_take_options_named_kind_and_name():
    @register("test-kind6", "labelled")
    def _labelled(kind: str = "", name: str = "") -> tuple:
        return kind, name

    assert build("test-kind6", "labelled", kind="k", name="n") == ("k", "n")
