"""@record: the small dataclass replacement of the prolog's modules (core/records.py)."""

from __future__ import annotations

import copy
import pickle

import pytest

from scratch_stage.core.records import (
    MISSING,
    FrozenInstanceError,
    field,
    fields,
    record,
    replace,
)


@record(frozen=True)
class Point:
    x: int
    y: int = 0
    tags: tuple[str, ...] = ()
    note: str = field(default="", compare=False)


@record
class Bag:
    name: str
    items: list[int] = field(default_factory=list, metadata={"doc": "the items"})


@record(frozen=True)
class Point3(Point):
    z: int = 0


def test_init_by_position_keyword_and_defaults() -> None:
    assert (Point(1).x, Point(1).y, Point(1).tags) == (1, 0, ())
    p = Point(1, y=2, tags=("a",))
    assert (p.x, p.y, p.tags) == (1, 2, ("a",))
    with pytest.raises(TypeError, match="missing argument 'x'"):
        Point()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'w'"):
        Point(1, w=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="multiple values for 'x'"):
        Point(1, x=2)  # type: ignore[misc]
    with pytest.raises(TypeError, match="takes 4 arguments, 5 given"):
        Point(1, 2, (), "", 5)  # type: ignore[call-arg]


def test_default_factory_gives_each_instance_its_own() -> None:
    a, b = Bag("a"), Bag("b")
    a.items.append(1)
    assert b.items == []


def test_equality_by_compared_fields_and_class() -> None:
    assert Point(1, 2) == Point(1, 2)
    assert Point(1, 2) != Point(2, 1)
    assert Point(1, note="x") == Point(1, note="y")  # compare=False
    assert Point(1) != Point3(1)  # another class is never equal
    assert Point(1) != (1, 0, (), "")  # type: ignore[comparison-overlap]
    assert Bag("a", [1]) == Bag("a", [1]) and Bag("a") != Bag("a", [1])


def test_frozen_forbids_assignment_and_deletion() -> None:
    p = Point(1)
    with pytest.raises(FrozenInstanceError):
        p.x = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):  # FrozenInstanceError is an AttributeError
        del p.y
    assert p.x == 1
    b = Bag("a")
    b.name = "b"  # not frozen
    assert b.name == "b"


def test_slots_no_stray_attributes() -> None:
    p, b = Point(1), Bag("a")
    assert not hasattr(p, "__dict__") and not hasattr(b, "__dict__")
    with pytest.raises(AttributeError):
        b.other = 1  # type: ignore[attr-defined]


def test_hashing_frozen_by_value_mutable_unhashable() -> None:
    assert hash(Point(1, 2)) == hash(Point(1, 2, note="other"))
    assert len({Point(1), Point(1), Point(2)}) == 2
    with pytest.raises(TypeError):
        hash(Bag("a"))


def test_repr_names_every_field() -> None:
    assert repr(Point(1, tags=("a",))) == "Point(x=1, y=0, tags=('a',), note='')"
    assert repr(Bag("a", [1])) == "Bag(name='a', items=[1])"


def test_fields_replace_and_inheritance() -> None:
    assert [f.name for f in fields(Point3)] == ["x", "y", "tags", "note", "z"]
    items = fields(Bag)[1]
    assert items.default is MISSING and items.default_factory is list
    assert items.metadata == {"doc": "the items"}
    assert fields(Bag("a")) == fields(Bag)
    p = Point3(1, z=5)
    q = replace(p, y=7)
    assert q == Point3(1, 7, z=5) and p.y == 0
    with pytest.raises(TypeError):
        fields(object())


def test_a_field_without_default_after_one_with_is_refused() -> None:
    with pytest.raises(TypeError, match="'b' without a default follows one"):

        @record
        class Bad:
            a: int = 0
            b: int  # type: ignore[misc]


def test_copy_deepcopy_and_pickle_of_frozen_and_mutable_records() -> None:
    p = Point3(1, 2, ("a",), "n", 3)
    for clone in (copy.copy(p), copy.deepcopy(p), pickle.loads(pickle.dumps(p))):
        assert clone == p and clone.note == "n" and clone is not p
    b = Bag("a", [1])
    deep = copy.deepcopy(b)
    deep.items.append(2)
    assert b.items == [1] and deep == Bag("a", [1, 2])
