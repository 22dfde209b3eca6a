"""A minimal grpcurl stand-in: runs grpcurl command lines through server reflection, the protocol grpcurl
itself uses when given no proto file (grpcurl is a Go binary this machine cannot install)."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, json_format, message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase


@dataclass
class GrpcurlCommand:
    address: str
    verb: str  # list | describe | invoke
    symbol: str = ""
    data: str = "{}"
    headers: list[tuple[str, str]] = field(default_factory=list)
    plaintext: bool = False


def parse_grpcurl(line: str) -> GrpcurlCommand:
    words = shlex.split(line)
    assert words[0] == "grpcurl", line
    rest = words[1:]
    data, headers, plaintext, positional = "{}", [], False, []
    i = 0
    while i < len(rest):
        word = rest[i]
        if word == "-plaintext":
            plaintext = True
        elif word == "-d":
            data, i = rest[i + 1], i + 1
        elif word == "-H":
            key, _, value = rest[i + 1].partition(":")
            headers.append((key.strip().lower(), value.strip()))
            i += 1
        elif word.startswith("-"):
            raise ValueError(f"unsupported grpcurl flag {word}")
        else:
            positional.append(word)
        i += 1
    address, *args = positional
    if args and args[0] in ("list", "describe"):
        return GrpcurlCommand(address, args[0], args[1] if len(args) > 1 else "", data, headers, plaintext)
    return GrpcurlCommand(address, "invoke", args[0], data, headers, plaintext)


class ReflectionClient:
    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.database = ProtoReflectionDescriptorDatabase(channel)
        self.pool = DescriptorPool(self.database)

    def list(self, service: str = "") -> list[str]:
        if service:
            return [m.full_name for m in self.pool.FindServiceByName(service).methods]
        return sorted(self.database.get_services())

    def describe(self, symbol: str) -> str:
        try:
            descriptor: Any = self.pool.FindServiceByName(symbol)
            proto: Any = descriptor_pb2.ServiceDescriptorProto()
        except KeyError:
            descriptor = self.pool.FindMessageTypeByName(symbol)
            proto = descriptor_pb2.DescriptorProto()
        descriptor.CopyToProto(proto)
        return str(proto)

    def invoke(self, method: str, data: str, metadata: list[tuple[str, str]]) -> dict[str, Any]:
        service_name, _, method_name = method.replace("/", ".").rpartition(".")
        md = self.pool.FindServiceByName(service_name).methods_by_name[method_name]
        request_cls = message_factory.GetMessageClass(md.input_type)
        response_cls = message_factory.GetMessageClass(md.output_type)
        request = json_format.Parse(data, request_cls())
        call = self.channel.unary_unary(
            f"/{service_name}/{method_name}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_cls.FromString,
        )
        response = call(request, metadata=metadata or None, timeout=60)
        return json_format.MessageToDict(response, preserving_proto_field_name=True)

    def run(self, command: GrpcurlCommand) -> Any:
        if command.verb == "list":
            return self.list(command.symbol)
        if command.verb == "describe":
            return self.describe(command.symbol)
        return self.invoke(command.symbol, command.data, command.headers)


def dumps(result: Any) -> str:
    return result if isinstance(result, str) else json.dumps(result, indent=1)
