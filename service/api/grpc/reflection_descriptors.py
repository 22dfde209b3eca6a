"""Descriptors for server reflection that carry each field's JSON name.

protoc's Python generator embeds FileDescriptorProtos without `json_name`, and reflection serves them as
they are; grpcurl then prints proto field names (`prompt_tokens`) through reflection but JSON names
(`promptTokens`) from the .proto file. Filling `json_name` makes both print the same JSON."""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, FileDescriptor


def _fill_json_names(proto: descriptor_pb2.DescriptorProto, message: Descriptor) -> None:
    for field in proto.field:
        # The runtime computes the name (explicit json_name option, else lowerCamelCase) even when the
        # serialized descriptor lacks it.
        field.json_name = message.fields_by_name[field.name].json_name
    for nested in proto.nested_type:
        _fill_json_names(nested, message.nested_types_by_name[nested.name])


def with_json_names(file: FileDescriptor) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    for message in proto.message_type:
        _fill_json_names(message, file.message_types_by_name[message.name])
    return proto


def reflection_pool(
    service_names: Iterable[str], source: descriptor_pool.DescriptorPool | None = None
) -> descriptor_pool.DescriptorPool:
    """A pool holding the services' files and everything they import (from `source`, default: the
    default pool), each with json_name filled in: pass it to `reflection.enable_server_reflection`."""
    source = source or descriptor_pool.Default()
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: FileDescriptor) -> None:
        if file.name in added:
            return
        for dependency in file.dependencies:  # a pool takes a file only after its imports
            add(dependency)
        pool.AddSerializedFile(with_json_names(file).SerializeToString())
        added.add(file.name)

    for name in service_names:
        add(source.FindFileContainingSymbol(name))
    return pool
