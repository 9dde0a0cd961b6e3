"""Random protobuf messages for any request type, built from its descriptor alone.

Values mix uniform noise with a dictionary of the inputs that broke services
before: out-of-range timestamps, huge integers, names that are paths, damaged
PNGs, tensors that declare more than they carry. A seed fixes every message,
so a failure is reproduced from the seed and the method name it prints.
"""

from __future__ import annotations

import io
import random
import struct

from google.protobuf import message as message_lib
from google.protobuf.descriptor import FieldDescriptor
from PIL import Image

INT_EDGES = [0, 1, -1, 2, 7, 64, 1000, 2**31 - 1, -(2**31), 2**32 - 1, 10**12, 253402300800]
INT64_EDGES = [2**63 - 1, -(2**63), 10**18]
FLOAT_EDGES = [0.0, -0.0, 0.5, -1.0, 1e-9, 1e9, 1e308, float("inf"), float("-inf"), float("nan")]
STRING_EDGES = [
    "",
    "a",
    "kuka-01",
    "grasp_success",
    "stable",
    "../../etc/passwd",
    "/abs/path",
    "..",
    "x" * 600,
    "a/b",
    "\x00",
    "é中文",
    "after:" + "9" * 30,
    "after:-1",
    "Bearer x",
    " ",
]
MAX_DEPTH = 5
MAX_REPEATED = 3


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 80, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def _bytes_edges() -> list[bytes]:
    good = _png(64, 64)
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    return [
        b"",
        b"\x00",
        good,
        good[: len(good) // 2],  # truncated after a valid header
        bytes(flipped),  # a bit flip inside the image data
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", 2**30, 2**30),
        _png(1, 1),
        _png(640, 8),
        b"\xff" * 1000,
    ]


BYTES_EDGES = _bytes_edges()


class MessageFuzzer:
    """Builds random messages of any type from a seeded generator."""

    def __init__(self, seed: int, set_probability: float = 0.6) -> None:
        self.rng = random.Random(seed)
        self.set_probability = set_probability

    def message(self, cls: type[message_lib.Message]) -> message_lib.Message:
        """A random message of type `cls`."""
        value = cls()
        self._fill(value, depth=0)
        return value

    def mutate(self, valid: message_lib.Message) -> message_lib.Message:
        """A copy of a valid message with one to three fields, at any depth, made hostile:
        such requests pass the first checks and reach the code behind them."""
        value = type(valid)()
        value.CopyFrom(valid)
        for _ in range(self.rng.randint(1, 3)):
            self._mutate_one(value, depth=0)
        return value

    def _mutate_one(self, value: message_lib.Message, depth: int) -> None:
        fields = list(value.DESCRIPTOR.fields)
        if not fields:
            return
        field = self.rng.choice(fields)
        container = getattr(value, field.name)
        entry_type = field.message_type
        if entry_type is not None and field.is_repeated and len(container) and depth < MAX_DEPTH:
            if entry_type.GetOptions().map_entry:
                if entry_type.fields_by_name["value"].message_type is not None:
                    key = self.rng.choice(list(container.keys()))
                    self._mutate_one(container[key], depth + 1)
                    return
            elif self.rng.random() < 0.7:
                self._mutate_one(self.rng.choice(list(container)), depth + 1)
                return
        nested = (
            field.message_type is not None
            and not field.message_type.GetOptions().map_entry
            and not field.is_repeated
            and value.HasField(field.name)
        )
        if nested and depth < MAX_DEPTH and self.rng.random() < 0.6:
            self._mutate_one(getattr(value, field.name), depth + 1)
        elif self.rng.random() < 0.2:
            value.ClearField(field.name)
        else:
            value.ClearField(field.name)
            self._set(value, field, depth)

    def _fill(self, value: message_lib.Message, depth: int) -> None:
        descriptor = value.DESCRIPTOR
        if descriptor.full_name == "google.protobuf.Timestamp":
            value.seconds = self._int(FieldDescriptor.TYPE_INT64)
            value.nanos = self.rng.choice([0, 1, 999_999_999, 10**9, -1, 2**31 - 1])
            return
        oneofs_done: set[str] = set()
        for field in descriptor.fields:
            if self.rng.random() > self.set_probability:
                continue
            oneof = field.containing_oneof
            if oneof is not None:
                if oneof.name in oneofs_done:
                    continue
                oneofs_done.add(oneof.name)
            if field.message_type is not None and depth >= MAX_DEPTH:
                continue
            self._set(value, field, depth)

    def _set(self, value: message_lib.Message, field: FieldDescriptor, depth: int) -> None:
        container = getattr(value, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            for _ in range(self.rng.randint(0, MAX_REPEATED)):
                key = self._scalar(key_field)
                if value_field.message_type is not None:
                    self._fill(container[key], depth + 1)
                else:
                    container[key] = self._scalar(value_field)
            return
        if field.is_repeated:
            for _ in range(self.rng.randint(0, MAX_REPEATED)):
                if field.message_type is not None:
                    self._fill(container.add(), depth + 1)
                else:
                    container.append(self._scalar(field))
            return
        if field.message_type is not None:
            self._fill(container, depth + 1)
            container.SetInParent()
            return
        setattr(value, field.name, self._scalar(field))

    def _scalar(self, field: FieldDescriptor):
        kind = field.type
        if kind == FieldDescriptor.TYPE_BOOL:
            return self.rng.random() < 0.5
        if kind == FieldDescriptor.TYPE_STRING:
            if self.rng.random() < 0.7:
                return self.rng.choice(STRING_EDGES)
            return "".join(self.rng.choice("ab-_./09Z") for _ in range(self.rng.randint(1, 40)))
        if kind == FieldDescriptor.TYPE_BYTES:
            if self.rng.random() < 0.8:
                return self.rng.choice(BYTES_EDGES)
            return self.rng.randbytes(self.rng.randint(0, 256))
        if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
            if self.rng.random() < 0.6:
                value = self.rng.choice(FLOAT_EDGES)
            else:
                value = self.rng.uniform(-10, 10)
            if kind == FieldDescriptor.TYPE_FLOAT and abs(value) > 3.4e38 and value == value:
                value = float("inf") if value > 0 else float("-inf")
            return value
        if kind == FieldDescriptor.TYPE_ENUM:
            numbers = [v.number for v in field.enum_type.values]
            # Open enums: a number no version of the contract defines.
            return self.rng.choice(numbers + [max(numbers) + 7])
        return self._int(kind)

    def _int(self, kind: int) -> int:
        unsigned = kind in (
            FieldDescriptor.TYPE_UINT32,
            FieldDescriptor.TYPE_UINT64,
            FieldDescriptor.TYPE_FIXED32,
            FieldDescriptor.TYPE_FIXED64,
        )
        wide = kind in (
            FieldDescriptor.TYPE_INT64,
            FieldDescriptor.TYPE_UINT64,
            FieldDescriptor.TYPE_SINT64,
            FieldDescriptor.TYPE_FIXED64,
            FieldDescriptor.TYPE_SFIXED64,
        )
        edges = INT_EDGES + (INT64_EDGES if wide else [])
        value = self.rng.choice(edges) if self.rng.random() < 0.7 else self.rng.randint(-50, 50)
        bits = 64 if wide else 32
        if unsigned:
            return value % (2**bits)
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        return min(max(value, low), high)
