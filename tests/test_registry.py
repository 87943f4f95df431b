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
