"""Small value classes without `dataclasses`, for the modules every prolog imports.

`import dataclasses` costs a prolog about 5 ms (it pulls in `inspect`, `ast`, `re` and
`typing`), and building each class with it costs more (it compiles generated source).
`@record` covers what this package asks of a dataclass and nothing else:

    @record(frozen=True)
    class Hold:
        datasets: tuple[str, ...]
        user: str
        since: float = 0.0                      # a default
        notes: dict[str, str] = field(default_factory=dict, compare=False)

Fields are the class's annotations in order (a base record's first). The class gets
`__slots__` (unless `slots=False`, e.g. for `functools.cached_property`), an `__init__`
taking the fields by position or keyword, `__repr__`, `__eq__` over the compared fields,
and, when frozen, `__hash__` and assignment that raises `FrozenInstanceError`. A slotted
record is a new class object: its methods must not use zero-argument `super()`.
`fields`, `replace` and `MISSING` behave as in `dataclasses`. Type checkers see a
dataclass (`dataclass_transform`, imported for them only: nothing here imports `typing`).
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: importing typing costs the prolog milliseconds
if TYPE_CHECKING:
    from typing import Any, Callable, TypeVar, overload

    from typing_extensions import dataclass_transform

    _T = TypeVar("_T")
else:

    def overload(function):  # runtime stand-ins for what type checkers import
        return function

    def dataclass_transform(**_kwargs):
        return lambda function: function


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
_FIELDS = "__record_fields__"


class FrozenInstanceError(AttributeError):
    """An assignment to a field of a frozen record."""


class Field:
    """One field of a record: its name, default (or factory), comparison and metadata."""

    __slots__ = ("compare", "default", "default_factory", "metadata", "name")

    def __init__(
        self,
        default: Any,
        default_factory: Any,
        compare: bool,
        metadata: dict[str, Any] | None,
    ) -> None:
        if default is not MISSING and default_factory is not MISSING:
            raise ValueError("a field cannot have both default and default_factory")
        self.name = ""
        self.default = default
        self.default_factory = default_factory
        self.compare = compare
        self.metadata: dict[str, Any] = dict(metadata or {})

    def __repr__(self) -> str:
        return f"Field(name={self.name!r}, default={self.default!r}, compare={self.compare})"


def field(
    *,
    default: Any = MISSING,
    default_factory: Callable[[], Any] | Any = MISSING,
    compare: bool = True,
    metadata: dict[str, Any] | None = None,
) -> Any:
    """A field's options, as the class attribute that declares it (like dataclasses.field)."""
    return Field(default, default_factory, compare, metadata)


def fields(class_or_instance: Any) -> tuple[Field, ...]:
    """The fields of a record class or instance, in order; TypeError for anything else."""
    try:
        found: tuple[Field, ...] = getattr(class_or_instance, _FIELDS)
    except AttributeError:
        raise TypeError(f"{class_or_instance!r} is not a record") from None
    return found


def replace(obj: _T, **changes: Any) -> _T:
    """A copy of record OBJ with CHANGES applied (validated by its __init__)."""
    values = {f.name: getattr(obj, f.name) for f in fields(obj)}
    values.update(changes)
    return type(obj)(**values)


@overload
@dataclass_transform(field_specifiers=(field, Field))
def record(cls: type[_T], /) -> type[_T]: ...


@overload
def record(*, frozen: bool = False, slots: bool = True) -> Callable[[type[_T]], type[_T]]: ...  # noqa: F811


def record(  # noqa: F811
    cls: type[_T] | None = None, /, *, frozen: bool = False, slots: bool = True
) -> type[_T] | Callable[[type[_T]], type[_T]]:
    """Make CLS a record (see the module doc); `@record` or `@record(frozen=True)`."""

    def wrap(cls: type[_T]) -> type[_T]:
        return _build(cls, frozen=frozen, slots=slots)

    return wrap if cls is None else wrap(cls)


def _declared(cls: type) -> list[Field]:
    inherited: dict[str, Field] = {}
    for base in reversed(cls.__mro__[1:]):
        for f in getattr(base, _FIELDS, ()):
            inherited[f.name] = f
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():  # noqa: RUF063
        if str(annotation).startswith(("ClassVar", "typing.ClassVar")):
            continue
        value = cls.__dict__.get(name, MISSING)
        spec = value if isinstance(value, Field) else Field(value, MISSING, True, None)
        spec.name = name
        inherited.pop(name, None)
        inherited[name] = spec
    declared = list(inherited.values())
    seen_default = False
    for f in declared:
        has_default = f.default is not MISSING or f.default_factory is not MISSING
        if seen_default and not has_default:
            raise TypeError(f"{cls.__name__}: field {f.name!r} without a default follows one")
        seen_default = seen_default or has_default
    return declared


def _build(original: type[_T], *, frozen: bool, slots: bool) -> type[_T]:
    cls: Any = original
    declared = tuple(_declared(cls))
    names = tuple(f.name for f in declared)
    if slots:
        namespace = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
        for name in names:
            namespace.pop(name, None)  # defaults live in the fields, not as class attributes
        namespace["__qualname__"] = cls.__qualname__
        namespace["__slots__"] = tuple(n for n in names if not _slotted(cls.__mro__[1:], n))
        cls = type(cls.__name__, cls.__bases__, namespace)
    else:
        for f in declared:  # a Field object must not linger as the class attribute
            if isinstance(cls.__dict__.get(f.name), Field):
                if f.default is MISSING:
                    delattr(cls, f.name)
                else:
                    setattr(cls, f.name, f.default)
    setattr(cls, _FIELDS, declared)
    compared = tuple(f.name for f in declared if f.compare)
    _install(cls, "__init__", _make_init(cls.__name__, declared))
    _install(cls, "__repr__", _make_repr(names))
    _install(cls, "__eq__", _make_eq(compared))
    if slots:  # copy, deepcopy and pickle, also of a frozen record
        _install(cls, "__getstate__", _make_getstate(names))
        _install(cls, "__setstate__", _make_setstate(names))
    if frozen:
        _install(cls, "__setattr__", _frozen_setattr)
        _install(cls, "__delattr__", _frozen_delattr)
        if "__hash__" not in cls.__dict__ or cls.__dict__["__hash__"] is None:
            cls.__hash__ = _make_hash(compared)
    elif "__hash__" not in cls.__dict__:
        cls.__hash__ = None  # mutable and compared by value: unhashable
    built: type[_T] = cls
    return built


def _slotted(bases: tuple[type, ...], name: str) -> bool:
    return any(name in getattr(base, "__slots__", ()) for base in bases)


def _install(cls: type, name: str, function: Any) -> None:
    """Set a generated method unless the class defines its own."""
    if name in cls.__dict__:
        return
    function.__qualname__ = f"{cls.__qualname__}.{name}"
    setattr(cls, name, function)


def _make_init(class_name: str, declared: tuple[Field, ...]) -> Callable[..., None]:
    count = len(declared)
    by_name = {f.name: f for f in declared}
    setter = object.__setattr__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) > count:
            raise TypeError(f"{class_name}() takes {count} arguments, {len(args)} given")
        for f, value in zip(declared, args):
            if f.name in kwargs:
                raise TypeError(f"{class_name}() got multiple values for {f.name!r}")
            setter(self, f.name, value)
        for f in declared[len(args) :]:
            if f.name in kwargs:
                value = kwargs[f.name]
            elif f.default is not MISSING:
                value = f.default
            elif f.default_factory is not MISSING:
                value = f.default_factory()
            else:
                raise TypeError(f"{class_name}() missing argument {f.name!r}")
            setter(self, f.name, value)
        unknown = [name for name in kwargs if name not in by_name]
        if unknown:
            raise TypeError(f"{class_name}() got an unexpected keyword argument {unknown[0]!r}")
        post_init = getattr(self, "__post_init__", None)
        if post_init is not None:
            post_init()

    return __init__


def _make_repr(names: tuple[str, ...]) -> Callable[[Any], str]:
    def __repr__(self: Any) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
        return f"{type(self).__qualname__}({shown})"

    return __repr__


def _make_eq(compared: tuple[str, ...]) -> Callable[[Any, object], Any]:
    def __eq__(self: Any, other: object) -> Any:
        if other.__class__ is not self.__class__:
            return NotImplemented
        mine = tuple(getattr(self, n) for n in compared)
        return mine == tuple(getattr(other, n) for n in compared)

    return __eq__


def _make_hash(compared: tuple[str, ...]) -> Callable[[Any], int]:
    def __hash__(self: Any) -> int:
        return hash(tuple(getattr(self, n) for n in compared))

    return __hash__


def _make_getstate(names: tuple[str, ...]) -> Callable[[Any], list[Any]]:
    def __getstate__(self: Any) -> list[Any]:
        return [getattr(self, name) for name in names]

    return __getstate__


def _make_setstate(names: tuple[str, ...]) -> Callable[[Any, list[Any]], None]:
    setter = object.__setattr__

    def __setstate__(self: Any, state: list[Any]) -> None:
        for name, value in zip(names, state):
            setter(self, name, value)

    return __setstate__


def _frozen_setattr(self: Any, name: str, value: object) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r} of a frozen record")


def _frozen_delattr(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r} of a frozen record")
