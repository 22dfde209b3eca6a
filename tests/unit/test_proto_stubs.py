"""The committed stubs in service/gen are what proto/ generates today (`make proto` refreshes them)."""

from __future__ import annotations

from pathlib import Path

from devtools.proto_gen import GEN_ROOT, generate, generated_snapshot


def test_stubs_are_fresh(tmp_path: Path) -> None:
    generate(tmp_path)
    fresh = generated_snapshot(tmp_path)
    committed = {k: v for k, v in generated_snapshot(GEN_ROOT).items() if k != "__init__.py"}
    assert committed.keys() == fresh.keys()
    stale = [name for name, text in fresh.items() if committed[name] != text]
    assert not stale, f"stale generated stubs {stale}: run `make proto`"


def test_contract_names() -> None:
    from service.gen.embedding.v1 import embedding_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["EmbeddingService"]
    assert service.full_name == "embedding.v1.EmbeddingService"
    assert {m.name for m in service.methods} == {"Embed", "EmbedStream", "Tokenize", "GetInfo", "Rerank"}
    stream = service.methods_by_name["EmbedStream"]
    assert stream.client_streaming and stream.server_streaming
    fields = set(pb.EmbedRequest.DESCRIPTOR.fields_by_name)
    assert fields == {
        "inputs",
        "instruction",
        "prompt_name",
        "dimensions",
        "normalize",
        "truncate",
        "encoding",
        "request_id",
        "model",
        "priority",
    }
