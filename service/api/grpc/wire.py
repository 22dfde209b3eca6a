"""Cheap checks of a serialized protobuf message before it is parsed: parsing 16 MiB of two-byte inputs
would build millions of strings before any limit could refuse them."""

from __future__ import annotations

from collections.abc import Iterator


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int | None]]:
    """The top-level fields in order: (field number, the value of a varint field, else None), payloads skipped
    without copying them. Stops at the first malformed tag or payload: the real parser then reports it."""
    pos = 0
    try:
        while pos < len(data):
            key, pos = _varint(data, pos)
            wire_type, value = key & 7, None
            if wire_type == 0:
                value, pos = _varint(data, pos)
            elif wire_type == 1:
                pos += 8
            elif wire_type == 2:
                length, pos = _varint(data, pos)
                pos += length
            elif wire_type == 5:
                pos += 4
            else:
                return
            yield key >> 3, value
    except ValueError:
        return


def count_field(data: bytes, field_number: int, stop_after: int) -> int:
    """Occurrences of a top-level field. The walk stops once the count passes `stop_after`, so it costs
    O(stop_after + other fields), not O(size). A malformed message returns the count so far."""
    count = 0
    for number, _ in _fields(data):
        if number == field_number:
            count += 1
            if count > stop_after:
                break
    return count


def last_varint(data: bytes, field_number: int, max_fields: int) -> int | None:
    """The value of a top-level varint field (the last occurrence, as the parser keeps it), without parsing
    the message; None when absent. A malformed message returns what was found so far, and one of more than
    `max_fields` fields returns None without walking further (O(max_fields), however large the message): the
    real parser or the input count then refuses it."""
    found = None
    for seen, (number, value) in enumerate(_fields(data), 1):
        if seen > max_fields:
            return None
        if number == field_number and value is not None:
            found = value
    return found
