"""The grpcurl commands of the README and docs/clients.md, run by the real grpcurl against the live service
through reflection and from the proto file, print the same JSON field names; the ghz configs decode into valid
requests."""

from __future__ import annotations

import json
import re
import shlex

import grpc
import pytest
from google.protobuf import json_format

from service.gen.embedding.v1 import embedding_pb2 as pb
from tests.helpers import ROOT, Facade
from tests.reflection_client import (
    json_paths,
    readme_grpcurl_lines,
    run_grpcurl,
    served_file_descriptors,
    symbol_of,
    without_comments,
)

LINES = readme_grpcurl_lines()


def test_readme_has_the_expected_commands() -> None:
    assert any(" list" in ln for ln in LINES) and any(" describe " in ln for ln in LINES)
    assert any("EmbeddingService/Embed" in ln and "-d" in ln for ln in LINES)
    assert any("-proto embedding/v1/embedding.proto" in ln for ln in LINES)


def check_result(line: str, output: str) -> None:
    """What each README command must show; JSON keys are proto3 JSON names, as grpcurl prints them."""
    symbol = symbol_of(line)
    if " list" in line:
        assert "embedding.v1.EmbeddingService" in output.split()
        return
    if " describe " in line:
        assert symbol.rsplit(".", 1)[-1] in output
        return
    result = json.loads(output)
    if symbol.endswith("/Embed"):
        words = shlex.split(line)
        request = json.loads(words[words.index("-d") + 1])
        assert len(result["embeddings"]) == len(request["inputs"])
        assert result["dimensions"] == request.get("dimensions", 64)
        assert result["usage"]["promptTokens"] > 0
    elif symbol.endswith("/Tokenize"):
        ids = result["inputs"][0]["ids"]
        assert ids[-1] == 151643 and len(result["inputs"][0]["tokens"]) == len(ids)
    elif symbol.endswith("/GetInfo"):
        assert result["dimensions"] == 64 and "query" in result["promptNames"]
    elif symbol.endswith("/Rerank"):
        (best,) = result["results"]  # top_n 1; proto3 JSON leaves out index 0
        assert 0.0 <= best.get("score", 0.0) <= 1.0 and best["document"] and result["usage"]["promptTokens"] > 0
    elif symbol.endswith("Health/Check"):
        assert result["status"] == "SERVING"
    else:
        raise AssertionError(f"no check for {line}")


@pytest.mark.parametrize("line", LINES)
def test_readme_grpcurl_command_through_reflection(facade: Facade, line: str) -> None:
    check_result(line, run_grpcurl(line, facade.target))


# The proto file holds embedding.v1 only: the health check needs reflection (or grpc's health.proto).
PROTO_LINES = [ln for ln in LINES if "grpc.health.v1" not in ln]


@pytest.mark.parametrize("line", PROTO_LINES)
def test_readme_grpcurl_command_from_the_proto_file_prints_the_same(facade: Facade, line: str) -> None:
    from_proto = run_grpcurl(line, facade.target, proto=True)
    check_result(line, from_proto)
    through_reflection = run_grpcurl(line, facade.target)
    if " list" in line:
        # From the file grpcurl knows its services only; reflection adds health and reflection itself.
        assert set(from_proto.split()) <= set(through_reflection.split())
    elif " describe " in line:
        assert without_comments(from_proto) == without_comments(through_reflection)
    else:
        assert json_paths(json.loads(from_proto)) == json_paths(json.loads(through_reflection))


def test_reflection_serves_json_names(facade: Facade) -> None:
    """protoc's Python stubs embed descriptors without json_name; the server fills it in for reflection."""
    with grpc.insecure_channel(facade.target) as channel:
        files = served_file_descriptors(channel, "embedding.v1.EmbeddingService")
    (embedding,) = [f for f in files if f.name == "embedding/v1/embedding.proto"]
    usage = next(m for m in embedding.message_type if m.name == "Usage")
    assert [(f.name, f.json_name) for f in usage.field] == [
        ("prompt_tokens", "promptTokens"),
        ("total_tokens", "totalTokens"),
    ]
    assert all(f.json_name for m in embedding.message_type for f in m.field)


@pytest.mark.parametrize("name", ["embed.reflection.json", "embed.proto.json"])
def test_ghz_configs_decode_into_valid_requests(facade: Facade, name: str) -> None:
    path = ROOT / "tools" / "ghz" / name
    config = json.loads(path.read_text())
    service, method = config["call"].rsplit(".", 1)
    assert service == "embedding.v1.EmbeddingService" and method == "Embed"
    if "proto" in config:
        assert (path.parent / config["proto"]).resolve() == ROOT / "proto" / "embedding" / "v1" / "embedding.proto"
        for include in config["import-paths"]:
            assert (path.parent / include).is_dir()
    # ghz template functions ({{.RequestNumber}}) are filled per call; give them a value.
    data = json.loads(re.sub(r"\{\{[^}]*\}\}", "1", json.dumps(config["data"])))
    request = json_format.ParseDict(data, pb.EmbedRequest())
    assert request.inputs
    if request.dimensions:
        # The configs target the real models (hidden 1024+); the dev model here has 64 dimensions.
        assert 32 <= request.dimensions <= 1024
        request.dimensions = 64
    with grpc.insecure_channel(facade.target) as channel:
        response = facade.stub(channel).Embed(request, timeout=30)
    assert len(response.embeddings) == len(request.inputs)
    assert response.dimensions == 64


def test_ghz_rerank_config_decodes_into_a_valid_request(facade: Facade) -> None:
    config = json.loads((ROOT / "tools" / "ghz" / "rerank.reflection.json").read_text())
    assert config["call"] == "embedding.v1.EmbeddingService.Rerank"
    data = json.loads(re.sub(r"\{\{[^}]*\}\}", "1", json.dumps(config["data"])))
    request = json_format.ParseDict(data, pb.RerankRequest())
    assert request.query and len(request.documents) > request.top_n > 0
    with grpc.insecure_channel(facade.target) as channel:
        response = facade.stub(channel).Rerank(request, timeout=30)
    assert len(response.results) == request.top_n
    assert sorted({r.index for r in response.results}) == sorted(r.index for r in response.results)
    assert [r.score for r in response.results] == sorted((r.score for r in response.results), reverse=True)
