"""Value classes without the dataclasses module.

`dataclasses` imports `inspect`, and with it ast, dis, tokenize and linecache: 1.3 MB of a
~16 MB agent on CPython 3.11, for a handful of plain records. This covers what the agent
uses of it: fields from class annotations in order, defaults, keyword or positional
construction, ==, repr, hash and immutability for frozen records, `replace` and `fields`.
No default factories: every default here is immutable.
"""

_MISSING = object()


class field(object):  # noqa: N801  (named like dataclasses.field, used the same way)
    """A default that takes no part in == and hash: field(default=(), compare=False)."""

    def __init__(self, default=_MISSING, compare=True):
        self.default = default
        self.compare = compare


class FrozenError(AttributeError):
    """Assignment to a frozen record (an AttributeError, like dataclasses.FrozenInstanceError)."""


def record(cls=None, frozen=True):
    """Class decorator: @record (frozen) or @record(frozen=False)."""
    if cls is None:
        return lambda c: _make(c, frozen)
    return _make(cls, frozen)


def fields(obj_or_cls):
    """Field names in declaration order."""
    return obj_or_cls._fields


def defaults(cls):
    """{name: default} for the fields that have one."""
    return dict(cls._defaults)


def replace(obj, **changes):
    """A copy of obj with some fields changed (validated like a fresh construction)."""
    values = {name: getattr(obj, name) for name in obj._fields}
    values.update(changes)
    return type(obj)(**values)


def _make(cls, frozen):
    names, dflts, compared = [], {}, []
    for klass in reversed(cls.__mro__):  # fields of a record base class come first
        for name in klass.__dict__.get("__annotations__", {}):
            if name in names:
                continue
            names.append(name)
    for name in names:
        value = getattr(cls, name, _MISSING)
        if isinstance(value, field):
            if value.compare:
                compared.append(name)
            value = value.default
            if value is _MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, value)
        else:
            compared.append(name)
        if value is not _MISSING:
            dflts[name] = value
    cls._fields = tuple(names)
    cls._defaults = dflts
    cls._compared = tuple(compared)
    cls.__init__ = _init
    cls.__repr__ = _repr
    cls.__eq__ = _eq
    if frozen:
        cls.__hash__ = _hash
        cls.__setattr__ = _frozen_setattr
        cls.__delattr__ = _frozen_setattr
    else:
        cls.__hash__ = None  # mutable and compared by value: unhashable, as dataclasses does
    return cls


def _init(self, *args, **kw):
    cls = type(self)
    if len(args) > len(cls._fields):
        raise TypeError("%s takes %d fields, %d given" % (cls.__name__, len(cls._fields), len(args)))
    values = dict(zip(cls._fields, args))
    for name, value in kw.items():
        if name not in cls._fields:
            raise TypeError("%s has no field %r" % (cls.__name__, name))
        if name in values:
            raise TypeError("%s: field %r given twice" % (cls.__name__, name))
        values[name] = value
    for name in cls._fields:
        if name not in values:
            if name not in cls._defaults:
                raise TypeError("%s: missing field %r" % (cls.__name__, name))
            values[name] = cls._defaults[name]
        object.__setattr__(self, name, values[name])


def _repr(self):
    return "%s(%s)" % (type(self).__name__, ", ".join("%s=%r" % (n, getattr(self, n)) for n in self._fields))


def _key(self):
    return tuple(getattr(self, n) for n in self._compared)


def _eq(self, other):
    if type(other) is not type(self):
        return NotImplemented
    return _key(self) == _key(other)


def _hash(self):
    return hash(_key(self))


def _frozen_setattr(self, name, *value):
    raise FrozenError("%s is frozen: cannot set or delete %r" % (type(self).__name__, name))
