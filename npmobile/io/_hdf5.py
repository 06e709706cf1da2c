"""How many bytes libhdf5 would allocate to read a variable-length attribute, read from the file's
own bytes before libhdf5 reads it.

Keras stores its model JSON ("model_config") and the names of its layers and weights
("layer_names", "weight_names") as variable-length strings. In the file each string is a 16-byte
descriptor in the attribute's data: its length (4 bytes), then where its bytes are (a global heap
collection's address and an object index). libhdf5 allocates and zero-fills length bytes for each
string before it compares the length with the heap object it points to, so one flipped byte of a
length makes a 1 MB file allocate up to 4 GiB. h5py cannot read the descriptors raw (every read of
a variable-length type converts it), so this module finds the attribute message in the object's
header (the HDF5 file format specification, "Object Headers" and "Attribute Message") and sums
the lengths. Cost: the header's bytes, read once per checked attribute (a few hundred bytes).

Only what Keras writes is read: compact attributes in a version 1 or 2 object header, not shared,
of a variable-length string or sequence of a fixed-size base type. Anything else that holds a
variable-length value is refused by the caller, since it cannot be measured here.
"""

import struct

ATTRIBUTE, CONTINUATION = 0x000C, 0x0010  # header message types
VLEN = 9  # datatype class
_FIXED_BASES = {0, 1, 3, 4, 5}  # integer, float, fixed string, bit field, opaque: no variable part


class Unmeasurable(Exception):
    """The attribute is not where, or not what, this module can read; the caller refuses it."""


class RawFile:
    """Bounded reads of an HDF5 file's bytes (a path, or the bytes of an in-memory file) at the
    file's addresses, which count from the superblock's base address. Also holds the sizes of
    addresses and lengths the superblock declares."""

    def __init__(self, source):
        self.data = source if isinstance(source, (bytes, bytearray, memoryview)) else None
        self.file = None if self.data is not None else open(source, "rb")
        self.size = len(self.data) if self.data is not None else self.file.seek(0, 2)
        self.base, self.sizes = 0, None

    def superblock(self):
        """Read the base address and the sizes of offsets and lengths (once)."""
        if self.sizes is not None:
            return
        block = self.read(0, 48)
        version = block[8]
        if version not in (0, 1, 2, 3):
            raise Unmeasurable(f"superblock version {version}")
        at = 13 if version < 2 else 9  # the size of offsets, then of lengths
        self.sizes = (block[at], block[at + 1])
        if self.sizes[0] not in (2, 4, 8) or self.sizes[1] not in (2, 4, 8):
            raise Unmeasurable(f"offset and length sizes {self.sizes}")
        self.base = _uint(block, {0: 24, 1: 28}.get(version, 12), self.sizes[0])

    def read(self, offset, n):
        offset += self.base
        if offset < 0 or n < 0 or offset + n > self.size:
            raise Unmeasurable(f"{n} bytes at {offset} lie outside the file ({self.size:,} bytes)")
        if self.data is not None:
            return bytes(self.data[offset:offset + n])
        self.file.seek(offset)
        return self.file.read(n)

    def close(self):
        if self.file is not None:
            self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _uint(b, offset, size):
    if offset + size > len(b):
        raise Unmeasurable("a header message runs off its chunk")
    return int.from_bytes(b[offset:offset + size], "little")


def _walk(raw, first, chunk_messages, skip=(0, 0)):
    """(type, flags, data) of every message of an object header: its first chunk (start, length),
    then each continuation chunk once; `skip` is what a continuation chunk holds before and
    after its messages (version 2: the "OCHK" signature and a checksum)."""
    chunks, seen, out = [first], set(), []
    while chunks:
        start, length = chunks.pop()
        if (start, length) in seen or len(seen) > 64:
            raise Unmeasurable("object header continuations loop")
        seen.add((start, length))
        for kind, flags, data in chunk_messages(raw.read(start, length)):
            out.append((kind, flags, data))
            if kind == CONTINUATION:
                at, n = _uint(data, 0, raw.sizes[0]), _uint(data, raw.sizes[0], raw.sizes[1])
                chunks.append((at + skip[0], n - skip[0] - skip[1]))
    return out


def _messages_v1(raw, addr):
    """The messages of a version 1 object header: a 16-byte prefix, then messages of an 8-byte
    header (type 2 bytes, size 2, flags 1, reserved 3) and their data."""
    prefix = raw.read(addr, 16)
    if prefix[0] != 1:
        raise Unmeasurable(f"object header version {prefix[0]} at {addr}")

    def chunk_messages(chunk):
        p = 0
        while p + 8 <= len(chunk):
            size = _uint(chunk, p + 2, 2)
            yield _uint(chunk, p, 2), chunk[p + 4], chunk[p + 8:p + 8 + size]
            p += 8 + size

    return _walk(raw, (addr + 16, _uint(prefix, 8, 4)), chunk_messages)


def _messages_v2(raw, addr):
    """The messages of a version 2 object header ("OHDR", version, flags, optional times and
    attribute limits, the first chunk's size), each with a 4-byte header (type 1, size 2, flags
    1) and 2 more bytes when the header tracks creation order."""
    head = raw.read(addr, 6)
    if head[:4] != b"OHDR" or head[4] != 2:
        raise Unmeasurable(f"no object header at {addr}")
    flags = head[5]
    p = addr + 6 + (16 if flags & 0x20 else 0) + (4 if flags & 0x10 else 0)
    width, order = 1 << (flags & 3), 2 if flags & 0x04 else 0

    def chunk_messages(chunk):
        q = 0
        while q + 4 + order <= len(chunk):
            size = _uint(chunk, q + 1, 2)
            yield chunk[q], chunk[q + 3], chunk[q + 4 + order:q + 4 + order + size]
            q += 4 + order + size

    return _walk(raw, (p + width, _uint(raw.read(p, width), 0, width)), chunk_messages, skip=(4, 4))


def _attribute(data, sizes):
    """(name, datatype bytes, element count, data bytes) of an attribute message."""
    version = data[0] if data else 0
    if version not in (1, 2, 3):
        raise Unmeasurable(f"attribute message version {version}")
    if version > 1 and _uint(data, 1, 1) & 0x03:
        raise Unmeasurable("a shared datatype or dataspace")
    name_n, type_n, space_n = _uint(data, 2, 2), _uint(data, 4, 2), _uint(data, 6, 2)

    def padded(n):
        return (n + 7) // 8 * 8 if version == 1 else n

    p = 8 + (version == 3)
    name = data[p:p + name_n].split(b"\0")[0]
    p += padded(name_n)
    dtype = data[p:p + type_n]
    p += padded(type_n)
    count = _elements(data[p:p + space_n], sizes[1])
    return name, dtype, count, data[p + padded(space_n):]


def _elements(space, length):
    """The number of elements a dataspace message declares (1 for a scalar, 0 for a null space)."""
    version, rank = _uint(space, 0, 1), _uint(space, 1, 1)
    if version == 2 and _uint(space, 3, 1) != 1:
        return {0: 1, 2: 0}.get(space[3], 0)
    first = 8 if version == 1 else 4
    count = 1
    for i in range(rank):
        count *= _uint(space, first + i * length, length)
    return count


def vlen_bytes(raw, addr, name):
    """The bytes libhdf5 would allocate to read attribute `name` of the object whose header is at
    `addr` (one entry per attribute message of that name): the sum over its elements of the stored
    length times the base type's size. raw: a RawFile.
    Raises Unmeasurable when the attribute is not a compact variable-length attribute."""
    raw.superblock()
    sizes, version = raw.sizes, raw.read(addr, 1)[0]
    messages = _messages_v1(raw, addr) if version == 1 else _messages_v2(raw, addr)
    found = []
    for kind, flags, data in messages:
        if kind != ATTRIBUTE or flags & 0x02:  # flag 2: a shared message, stored elsewhere
            continue
        attr_name, dtype, count, values = _attribute(data, sizes)
        if attr_name != name.encode():
            continue
        if len(dtype) < 16 or dtype[0] & 0x0F != VLEN or dtype[8] & 0x0F not in _FIXED_BASES:
            raise Unmeasurable(f"attribute {name!r} is not a variable-length string or sequence of numbers")
        base = _uint(dtype, 12, 4)
        step = 4 + sizes[0] + 4  # length, heap collection address, object index
        if count * step > len(values):
            raise Unmeasurable(f"attribute {name!r} declares {count:,} values in {len(values)} bytes")
        found.append(sum(_uint(values, i * step, 4) for i in range(count)) * base)
    if not found:
        raise Unmeasurable(f"attribute {name!r} is not stored in its object's header")
    return found
