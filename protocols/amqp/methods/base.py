"""What every method class shares (``methods``): the argument kinds, the ``Method``
base, the registry ``METHODS`` and the ``_method`` decorator that fills it."""

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, dataclass_transform

# Argument kinds. The R_ kinds are reserved arguments with no field.
OCTET, SHORT, LONG, LONGLONG, SHORTSTR, LONGSTR, BIT, TABLE = range(8)
R_SHORT, R_SHORTSTR, R_LONGSTR, R_BIT = range(8, 12)
_RESERVED = frozenset((R_SHORT, R_SHORTSTR, R_LONGSTR, R_BIT))
_BITS = frozenset((BIT, R_BIT))
_RESERVED_BYTES = {R_SHORT: b"\x00\x00", R_SHORTSTR: b"\x00", R_LONGSTR: b"\x00\x00\x00\x00"}


class Method:
    """Base of every method class."""

    __slots__ = ()

    CLASS_ID: ClassVar[int]
    METHOD_ID: ClassVar[int]
    NAME: ClassVar[str]
    HAS_CONTENT: ClassVar[bool] = False
    FROM_CLIENT: ClassVar[bool]
    FROM_SERVER: ClassVar[bool]
    ARGUMENTS: ClassVar[tuple[tuple[str | None, int], ...]]
    _KINDS: ClassVar[tuple[int, ...]]  # the kinds of ARGUMENTS, for the decoder


# Keyed by class_id << 16 | method_id.
METHODS: dict[int, type[Method]] = {}
# Methods of the specification this codec does not carry: 540 NOT_IMPLEMENTED.
NOT_IMPLEMENTED = frozenset(
    (
        10 << 16 | 70,  # connection.update-secret
        10 << 16 | 71,  # connection.update-secret-ok
        30 << 16 | 10,  # access.request
        30 << 16 | 11,  # access.request-ok
    )
)


@dataclass_transform()  # the classes it registers are dataclasses
def _method(
    class_id: int,
    method_id: int,
    name: str,
    *arguments: tuple[str | None, int],
    client: bool = False,
    server: bool = False,
    content: bool = False,
) -> Any:
    def register(cls: type) -> type[Method]:
        new: type[Any] = dataclass(frozen=True, slots=True)(cls)
        names = [n for n, kind in arguments if kind not in _RESERVED]
        assert [x.name for x in fields(new)] == names, name
        new.CLASS_ID = class_id
        new.METHOD_ID = method_id
        new.NAME = name
        new.HAS_CONTENT = content
        new.FROM_CLIENT = client
        new.FROM_SERVER = server
        new.ARGUMENTS = arguments
        new._KINDS = tuple(kind for _, kind in arguments)
        key = class_id << 16 | method_id
        assert key not in METHODS, name
        METHODS[key] = new
        return new

    return register


def _table() -> Any:
    return field(default_factory=dict)
