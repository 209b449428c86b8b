"""A small pickle interpreter for checkpoint files: data only, bounded work, inert results.

``pickle.Unpickler`` (even with ``find_class`` restricted) runs the allowed callables on
arguments the file chooses and hashes whatever the file uses as dict keys: a file could build
an object-dtype numpy array over its own bytes (pointers it made up), a stride-0 view that
becomes gigabytes when copied, or nested-tuple keys whose hash takes 2^60 steps. This module
replaces it for every checkpoint the project reads. ``load`` executes the opcodes itself and:

* creates only ``dict``/``OrderedDict``, ``list``, ``tuple``, ``str``, ``int`` (at most
  ``MAX_INT_BYTES`` bytes), ``float``, ``bool``, ``None``, raw byte ranges (``RawBytes``, views
  of the file, never copied) and what a ``Profile`` returns for the globals it allows: inert
  descriptions (``Inert``) that hold validated arguments and build nothing;
* accepts only ``str`` or ``int`` as dict keys (cheap, bounded hashing);
* refuses every opcode that is not data (``INST``/``OBJ``/``NEWOBJ_EX``, extensions,
  out-of-band buffers, sets) and every global the profile does not name, before anything is
  called; a refusal is a ``PickleRefused`` with a one-line message whose quoted values are
  length-bounded (``short``).

Each opcode costs time proportional to its own bytes, so the whole load is linear in the file,
and at most ``MAX_OPCODES`` opcodes are run (about 1.5 s).
``finalize`` then walks the result once with a depth limit (``MAX_DEPTH``) and a budget of
visited nodes (``MAX_NODES``, counting a shared object each time it is reached, so that
neither cycles nor exponential sharing survive), and turns each inert description into its
final value through the profile (numpy arrays from validated byte ranges, in the callers).
"""

from __future__ import annotations

import collections
import struct
from typing import Any, Dict, List, Tuple

MAX_DEPTH = 48  # nested containers; a training checkpoint needs about 6
MAX_NODES = 1_000_000  # objects visited by finalize (a training checkpoint has ~20 000; ~2.5 s)
# Opcodes run per pickle (a state dict's pickle has a few thousand, a training checkpoint's
# ~10 000): bounds the time of a file made of millions of one-byte opcodes (~1.5 s at most).
MAX_OPCODES = 2_000_000
MAX_INT_BYTES = 64  # LONG1/LONG4 payloads: numbers, not megabyte integers
MAX_GLOBAL_NAME = 200  # characters of a GLOBAL's module or name
MAX_DIMS = 32  # array / tensor rank


class PickleRefused(ValueError):
    """The pickle holds something a checkpoint may not (message: one bounded line)."""


class Truncated(PickleRefused):
    """The pickle ends before its STOP opcode."""


def short(value: Any, limit: int = 60) -> str:
    """A bounded description of ``value`` for an error message (never a full repr)."""
    if isinstance(value, str):
        text = value if len(value) <= limit else value[:limit] + "..."
        return repr(text)
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if value.bit_length() <= 64 else "a huge integer"
    if isinstance(value, (bytes, bytearray, RawBytes)):
        return f"{len(value)} bytes"
    if isinstance(value, (tuple, list, dict)):
        return f"a {type(value).__name__} of {len(value)} items"
    if isinstance(value, Inert):
        return value.describe()[:limit]
    return f"a {type(value).__name__}"


class RawBytes:
    """A byte string from the pickle, as a view of the file's buffer (nothing copied)."""

    __slots__ = ("view",)

    def __init__(self, view: memoryview) -> None:
        self.view = view

    def __len__(self) -> int:
        return self.view.nbytes

    def tobytes(self) -> bytes:
        return self.view.tobytes()


class Inert:
    """Base of the placeholders a profile returns; ``describe`` names them in errors."""

    __slots__ = ()

    def describe(self) -> str:
        return type(self).__name__

    def call(self, args: tuple) -> Any:
        """REDUCE with this object as the callable."""
        raise PickleRefused(f"{self.describe()} cannot be called")

    def build(self, state: Any) -> None:
        """BUILD (``__setstate__``) on this object."""
        raise PickleRefused(f"{self.describe()} takes no state")


class OrderedDictType(Inert):
    """``collections.OrderedDict`` as a global: called without arguments, it makes an empty one
    (the pickle then fills it item by item)."""

    __slots__ = ()

    def describe(self) -> str:
        return "collections.OrderedDict"

    def call(self, args: tuple) -> Any:
        if args:
            raise PickleRefused("OrderedDict called with arguments")
        return collections.OrderedDict()


class Profile:
    """What one kind of checkpoint may name: globals, persistent ids, the final values."""

    #: (module, name) -> the Inert stand-in the global resolves to
    globals: Dict[Tuple[str, str], Any] = {}
    #: how BINSTRING/SHORT_BINSTRING (Python 2 ``str``) are decoded
    string_encoding = "utf-8"

    def find_class(self, module: str, name: str) -> Any:
        found = self.globals.get((module, name))
        if found is None:
            raise Refused(module, name)
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise PickleRefused("unexpected persistent id in a plain pickle")

    def finish(self, value: Inert, depth: int) -> Any:
        """The final value of an inert description met by ``finalize``."""
        raise PickleRefused(f"{value.describe()} is not a complete value")


class Refused(PickleRefused):
    """A global outside the profile; nothing was called."""

    def __init__(self, module: str, name: str) -> None:
        import _compat_pickle

        module = _compat_pickle.IMPORT_MAPPING.get(module, module)  # "__builtin__" -> "builtins"
        self.module, self.qualname = module, f"{module}.{name}"
        super().__init__(self.qualname)


_DICT_TYPES = (dict, collections.OrderedDict)
_MARK = object()


def _key(value: Any) -> Any:
    # str and int hash in time linear in their (bounded) size; a tuple key may hash for ever.
    if type(value) is str or type(value) is int:
        return value
    raise PickleRefused(f"a dict key is {short(value)}: checkpoint keys are strings or integers")


class _Reader:
    """Bounds-checked reads from the pickle's buffer."""

    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: memoryview) -> None:
        self.buf, self.pos, self.end = buf, 0, buf.nbytes

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > self.end:
            raise Truncated("the pickle ends in the middle of an opcode (truncated file)")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def byte(self) -> int:
        if self.pos >= self.end:
            raise Truncated("the pickle ends before its STOP opcode (truncated file)")
        value = self.buf[self.pos]
        self.pos += 1
        return value

    def line(self) -> str:
        start = self.pos
        stop = min(self.end, start + MAX_GLOBAL_NAME + 1)
        for i in range(start, stop):
            if self.buf[i] == 0x0A:
                self.pos = i + 1
                try:
                    return self.buf[start:i].tobytes().decode("ascii")
                except UnicodeDecodeError:
                    raise PickleRefused("a global's name is not ASCII") from None
        if stop == self.end:
            raise Truncated("the pickle ends inside a global's name (truncated file)")
        raise PickleRefused("a global's name is too long")


_U4 = struct.Struct("<I")
_U8 = struct.Struct("<Q")
_I4 = struct.Struct("<i")
_F8 = struct.Struct(">d")


def load(buf: Any, profile: Profile, start: int = 0) -> Tuple[Any, int]:
    """Run the pickle at ``buf[start:]``; returns (object, offset just after STOP).

    ``buf``: any buffer (bytes, mmap, memoryview); byte strings in the result are
    ``RawBytes`` views of it. Raises ``PickleRefused`` (``Truncated``, ``Refused``).
    """
    view = memoryview(buf).cast("B")[start:]
    r = _Reader(view)
    stack: List[Any] = []
    marks: List[int] = []
    memo: Dict[int, Any] = {}

    def pop_mark() -> List[Any]:
        if not marks:
            raise PickleRefused("corrupt pickle (no MARK on the stack)")
        at = marks.pop()
        items = stack[at:]
        del stack[at:]
        return items

    def pop() -> Any:
        if len(stack) <= (marks[-1] if marks else 0):
            raise PickleRefused("corrupt pickle (stack underflow)")
        return stack.pop()

    def top() -> Any:
        if len(stack) <= (marks[-1] if marks else 0):
            raise PickleRefused("corrupt pickle (stack underflow)")
        return stack[-1]

    def text(raw: memoryview, encoding: str = "utf-8") -> str:
        try:
            return str(raw, encoding, "surrogatepass" if encoding == "utf-8" else "strict")
        except UnicodeDecodeError:
            raise PickleRefused(f"a string is not valid {encoding}") from None

    def set_items(target: Any, items: List[Any]) -> None:
        if type(target) not in _DICT_TYPES:
            raise PickleRefused(f"SETITEM on {short(target)}, not a dict")
        if len(items) % 2:
            raise PickleRefused("corrupt pickle (odd number of dict items)")
        for i in range(0, len(items), 2):
            target[_key(items[i])] = items[i + 1]

    def append(target: Any, items: List[Any]) -> None:
        if type(target) is not list:
            raise PickleRefused(f"APPEND on {short(target)}, not a list")
        target.extend(items)

    def get(index: int) -> None:
        try:
            stack.append(memo[index])
        except KeyError:
            raise PickleRefused(f"corrupt pickle (memo entry {index} was never stored)") from None

    def put(index: int) -> None:
        memo[index] = top()

    steps = 0
    while True:
        steps += 1
        if steps > MAX_OPCODES:
            raise PickleRefused(f"more than {MAX_OPCODES} pickle opcodes (a checkpoint has thousands)")
        op = r.byte()
        if op == 0x80:  # PROTO
            version = r.byte()
            if not 2 <= version <= 5:
                raise PickleRefused(f"pickle protocol {version} is not used by checkpoints")
        elif op == 0x95:  # FRAME: a length hint only
            r.take(8)
        elif op == 0x2E:  # STOP
            if len(stack) != 1 or marks:
                raise PickleRefused("corrupt pickle (STOP with a malformed stack)")
            return stack[0], start + r.pos
        elif op == 0x28:  # MARK
            marks.append(len(stack))
        elif op == 0x30:  # POP
            if marks and marks[-1] == len(stack):
                marks.pop()  # pickletools: POP of a bare MARK
            else:
                pop()
        elif op == 0x31:  # POP_MARK
            pop_mark()
        elif op == 0x32:  # DUP
            stack.append(top())
        elif op == 0x4E:  # NONE
            stack.append(None)
        elif op == 0x88:  # NEWTRUE
            stack.append(True)
        elif op == 0x89:  # NEWFALSE
            stack.append(False)
        elif op == 0x4B:  # BININT1
            stack.append(r.byte())
        elif op == 0x4D:  # BININT2
            raw = r.take(2)
            stack.append(raw[0] | raw[1] << 8)
        elif op == 0x4A:  # BININT
            stack.append(_I4.unpack(r.take(4))[0])
        elif op in (0x8A, 0x8B):  # LONG1, LONG4
            n = r.byte() if op == 0x8A else _I4.unpack(r.take(4))[0]
            if not 0 <= n <= MAX_INT_BYTES:
                raise PickleRefused(f"an integer of {n} bytes")
            stack.append(int.from_bytes(r.take(n), "little", signed=True))
        elif op == 0x47:  # BINFLOAT
            stack.append(_F8.unpack(r.take(8))[0])
        elif op == 0x58:  # BINUNICODE
            stack.append(text(r.take(_U4.unpack(r.take(4))[0])))
        elif op == 0x8C:  # SHORT_BINUNICODE
            stack.append(text(r.take(r.byte())))
        elif op == 0x8D:  # BINUNICODE8
            stack.append(text(r.take(_U8.unpack(r.take(8))[0])))
        elif op == 0x55:  # SHORT_BINSTRING (Python 2 str)
            stack.append(text(r.take(r.byte()), profile.string_encoding))
        elif op == 0x54:  # BINSTRING
            n = _I4.unpack(r.take(4))[0]
            stack.append(text(r.take(n), profile.string_encoding))
        elif op == 0x43:  # SHORT_BINBYTES
            stack.append(RawBytes(r.take(r.byte())))
        elif op == 0x42:  # BINBYTES
            stack.append(RawBytes(r.take(_U4.unpack(r.take(4))[0])))
        elif op in (0x8E, 0x96):  # BINBYTES8, BYTEARRAY8
            stack.append(RawBytes(r.take(_U8.unpack(r.take(8))[0])))
        elif op == 0x29:  # EMPTY_TUPLE
            stack.append(())
        elif op == 0x85:  # TUPLE1
            stack.append((pop(),))
        elif op == 0x86:  # TUPLE2
            b = pop()
            stack.append((pop(), b))
        elif op == 0x87:  # TUPLE3
            c = pop()
            b = pop()
            stack.append((pop(), b, c))
        elif op == 0x74:  # TUPLE
            stack.append(tuple(pop_mark()))
        elif op == 0x5D:  # EMPTY_LIST
            stack.append([])
        elif op == 0x6C:  # LIST
            stack.append(pop_mark())
        elif op == 0x61:  # APPEND
            item = pop()
            append(top(), [item])
        elif op == 0x65:  # APPENDS
            items = pop_mark()
            append(top(), items)
        elif op == 0x7D:  # EMPTY_DICT
            stack.append({})
        elif op == 0x64:  # DICT
            out: Dict[Any, Any] = {}
            set_items(out, pop_mark())
            stack.append(out)
        elif op == 0x73:  # SETITEM
            value = pop()
            key = pop()
            set_items(top(), [key, value])
        elif op == 0x75:  # SETITEMS
            items = pop_mark()
            set_items(top(), items)
        elif op == 0x71:  # BINPUT
            put(r.byte())
        elif op == 0x72:  # LONG_BINPUT
            put(_U4.unpack(r.take(4))[0])
        elif op == 0x94:  # MEMOIZE
            put(len(memo))
        elif op == 0x68:  # BINGET
            get(r.byte())
        elif op == 0x6A:  # LONG_BINGET
            get(_U4.unpack(r.take(4))[0])
        elif op == 0x63:  # GLOBAL
            module = r.line()
            stack.append(profile.find_class(module, r.line()))
        elif op == 0x93:  # STACK_GLOBAL
            name = pop()
            module = pop()
            if type(module) is not str or type(name) is not str:
                raise PickleRefused("STACK_GLOBAL on non-strings")
            stack.append(profile.find_class(module[:MAX_GLOBAL_NAME], name[:MAX_GLOBAL_NAME]))
        elif op == 0x52:  # REDUCE
            args = pop()
            func = pop()
            if type(args) is not tuple:
                raise PickleRefused(f"REDUCE with {short(args)} as arguments")
            if not isinstance(func, Inert):
                raise PickleRefused(f"REDUCE calls {short(func)}")
            stack.append(func.call(args))
        elif op == 0x62:  # BUILD
            state = pop()
            target = top()
            if isinstance(target, Inert):
                target.build(state)
            elif type(target) is collections.OrderedDict and type(state) is dict:
                # A module's state_dict() carries its _metadata (per-module versions) as
                # instance attributes; they do not change any weight: checked, then dropped.
                for name in state:
                    _key(name)
            else:
                raise PickleRefused(f"BUILD on {short(target)} with {short(state)}")
        elif op == 0x51:  # BINPERSID
            stack.append(profile.persistent_load(pop()))
        else:
            name = _OPCODE_NAMES.get(op, f"0x{op:02x}")
            raise PickleRefused(f"pickle opcode {name} is not used by checkpoints (refused, nothing executed)")


def _opcode_names() -> Dict[int, str]:
    import pickletools

    return {ord(code.code): code.name for code in pickletools.opcodes}


_OPCODE_NAMES = _opcode_names()


def finalize(obj: Any, profile: Profile) -> Any:
    """``obj`` with every inert description replaced by ``profile.finish`` of it.

    Containers are rebuilt (a shared container becomes separate copies, each counted against
    ``MAX_NODES``); ``RawBytes`` left over become ``bytes``. PickleRefused when the structure
    is deeper than ``MAX_DEPTH`` (cycles included) or larger than ``MAX_NODES``.
    """
    budget = [MAX_NODES]
    finished: Dict[int, Any] = {}  # id(inert) -> its value: a shared tensor is built once

    def walk(value: Any, depth: int) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise PickleRefused(f"more than {MAX_NODES} objects (counting shared ones each time)")
        kind = type(value)
        if kind in (str, int, float, bool) or value is None:
            return value
        if depth >= MAX_DEPTH:
            raise PickleRefused(f"objects nested more than {MAX_DEPTH} deep")
        if kind is dict or kind is collections.OrderedDict:
            return kind((k, walk(v, depth + 1)) for k, v in value.items())
        if kind is list:
            return [walk(v, depth + 1) for v in value]
        if kind is tuple:
            return tuple(walk(v, depth + 1) for v in value)
        if kind is RawBytes:
            return value.tobytes()
        if isinstance(value, Inert):
            key = id(value)
            if key not in finished:
                finished[key] = profile.finish(value, depth)
            return finished[key]
        raise PickleRefused(f"unexpected {short(value)} in the pickle")

    return walk(obj, 0)


def check_ints(value: Any, what: str, allow_negative: bool = False) -> Tuple[int, ...]:
    """A tuple/list of at most ``MAX_DIMS`` plain ints (sizes, strides) or PickleRefused."""
    if type(value) not in (tuple, list) or len(value) > MAX_DIMS or not all(type(v) is int for v in value):
        raise PickleRefused(f"tensor {what} is not a tuple of at most {MAX_DIMS} integers: {short(value)}")
    if not allow_negative and any(v < 0 for v in value):
        raise PickleRefused(f"negative tensor {what} {tuple(value)}")
    return tuple(value)


def product(values: Tuple[int, ...]) -> int:
    out = 1
    for v in values:
        out *= v
    return out


__all__ = [
    "Inert",
    "MAX_DEPTH",
    "MAX_NODES",
    "MAX_OPCODES",
    "PickleRefused",
    "Profile",
    "RawBytes",
    "Refused",
    "Truncated",
    "check_ints",
    "finalize",
    "load",
    "product",
    "short",
]
