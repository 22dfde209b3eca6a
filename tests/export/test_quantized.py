"""Quantized exports (--precision int8 / int4): the graph keeps its fused attention and float embeddings with the
linear layers as MatMulNBits, the export gate measures it against the fp32 reference and refuses a broken one,
and a quantized repository is served by the real Triton and facade with the vectors (and reranker scores) its own
graph gives in-process. --quant-activations fp16 quantizes the float16 graph instead: float16 attention and
MatMulNBits (what ONNX Runtime's CUDA provider has kernels for), through the same gate, served the same way."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from onnx import numpy_helper
from sentence_transformers import SentenceTransformer
from typer.testing import CliRunner

from export import quantize
from export.exporter import ExportOptions, run_export
from export.quant_texts import CALIBRATION_TEXTS
from export.samples import rerank_ids
from export.triton_config import RepoSettings, parse_pbtxt
from export.verify import THRESHOLDS, rerank_score
from service.cli import app
from service.contract import ATTENTION_MASK, INPUT_IDS, RERANK_LOGITS, ModelFacts, Precision
from service.gen.embedding.v1 import embedding_pb2 as pb
from service.gen.embedding.v1 import embedding_pb2_grpc as pb_grpc
from service.triton.runtime import TritonProcess, start_triton
from tests.conftest import TEST_MAX_BATCH, TEST_MAX_TOKENS, export_dev, export_dev_reranker
from tests.export.test_export import DOCS, QUERY_PREFIX, onnx_embed
from tests.helpers import Facade, run_facade

EMBEDDER, RERANKER = "qwen3_embedding", "qwen3_reranker"
# The dev model in int4 with float16 activations (--quant-activations fp16), served beside the others.
HALF = "qwen3_embedding_fp16act"


def export_half_activations(model_dir: Path, output: Path) -> Path:
    """export_dev's settings (the same small limits), int4 rtn with --quant-activations fp16, named HALF."""
    from rich.console import Console

    from service.contract import default_buckets

    repo = RepoSettings(
        name=HALF, precision=Precision.INT4, max_input_tokens=TEST_MAX_TOKENS, max_batch_size=TEST_MAX_BATCH,
        warmup_lengths=tuple(default_buckets(TEST_MAX_TOKENS)), ort_intra_op_threads=1,
    )  # fmt: skip
    opts = ExportOptions(
        model=str(model_dir), output=output, repo=repo, verify_long_tokens=TEST_MAX_TOKENS, quant_activations="fp16"
    )
    return run_export(opts, Console(quiet=True))


@pytest.fixture(scope="module")
def quantized_repository(dev_model_dir: Path, dev_reranker_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dev model in int4 (round to nearest), once more in int4 with float16 activations (HALF), and the dev
    reranker in int8, all through the export gate."""
    out = tmp_path_factory.mktemp("quantized-repo")
    export_dev(dev_model_dir, out, precision=Precision.INT4)
    # The same checkpoint from a directory of its own name: the facade serves each model under its source's name,
    # and two models may not share one.
    half_source = tmp_path_factory.mktemp("half-source") / "dev-model-fp16act"
    shutil.copytree(dev_model_dir, half_source)
    export_half_activations(half_source, out)
    return export_dev_reranker(dev_reranker_dir, out, precision=Precision.INT8)


@pytest.fixture(scope="module")
def quantized_triton(quantized_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonProcess]:
    proc = start_triton(quantized_repository, tmp_path_factory.mktemp("quant-logs") / "triton.log")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def quantized_facade(
    quantized_repository: Path, quantized_triton: TritonProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Facade]:
    with run_facade(quantized_repository, quantized_triton.grpc_url, tmp_path_factory.mktemp("quant-facade")) as f:
        yield f


def facts_of(model_dir: Path) -> ModelFacts:
    cfg = parse_pbtxt((model_dir / "config.pbtxt").read_text())
    return ModelFacts.from_parameters({k: v.string_value for k, v in cfg.parameters.items()})


def test_only_the_linear_layers_are_quantized(quantized_repository: Path) -> None:
    model = onnx.load(str(quantized_repository / EMBEDDER / "1" / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    # 2 layers x (qkv, o, gate+up, down); attention stays the fused contrib op, no float MatMul is left.
    assert ops.count("MatMulNBits") == 8 and "MatMul" not in ops
    assert ops.count("GroupQueryAttention") == 2
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    bits = {a.i for n in nbits for a in n.attribute if a.name == "bits"}
    blocks = {a.i for n in nbits for a in n.attribute if a.name == "block_size"}
    assert bits == {4} and blocks == {32}
    # Integer compute by default (ONNX Runtime's accuracy_level 4): the fast kernels on CPU (docs/export.md).
    assert {a.i for n in nbits for a in n.attribute if a.name == "accuracy_level"} == {4}
    assert all(any(a.name == "accuracy_level" for a in n.attribute) for n in nbits)
    # Embeddings stay float: the table in float16 (half its bytes), its rows cast to float32 after the Gather;
    # the norms in float32. The weights are in model.onnx.data, which ONNX Runtime maps (docs/export.md).
    embed = next(t for t in model.graph.initializer if t.name == "embed_tokens.weight")
    assert embed.data_type == onnx.TensorProto.FLOAT16
    (gather,) = [n for n in model.graph.node if n.op_type == "Gather" and n.input[0] == "embed_tokens.weight"]
    (reader,) = [n for n in model.graph.node if gather.output[0] in n.input]
    assert reader.op_type == "Cast" and reader.attribute[0].i == onnx.TensorProto.FLOAT
    norms = [t for t in model.graph.initializer if t.name.endswith("norm.weight")]
    assert norms and all(t.data_type == onnx.TensorProto.FLOAT for t in norms)
    assert (quantized_repository / EMBEDDER / "1" / "model.onnx.data").is_file()
    # The reranker keeps its two-row head in float: only [hidden, >= 16] weights are linear layers.
    rr = onnx.load(str(quantized_repository / RERANKER / "1" / "model.onnx"))
    rr_ops = [n.op_type for n in rr.graph.node]
    assert rr_ops.count("MatMulNBits") == 8 and rr_ops.count("MatMul") == 1


def test_the_computed_quantized_size_is_the_written_graphs(quantized_repository: Path, dev_model_dir: Path) -> None:
    """export/memory.py quantized_weight_bytes (what the chart's int4 / int8 sizes come from, pinned to it by
    tests/deployment/test_helm.py test_the_charts_quantized_weight_sizes_are_export_memorys) equals the bytes of
    the float16 embedding table, the MatMulNBits weights, scales and zero points ONNX Runtime's quantizer wrote
    and the rotary caches of the config's max_position_embeddings."""
    from export.memory import quantized_weight_bytes

    cfg = json.loads((dev_model_dir / "config.json").read_text())
    model = onnx.load(str(quantized_repository / EMBEDDER / "1" / "model.onnx"))
    sizes = {t.name: numpy_helper.to_array(t).nbytes for t in model.graph.initializer}
    written = sizes["embed_tokens.weight"] + sum(
        sizes[i] for n in model.graph.node if n.op_type == "MatMulNBits" for i in n.input[1:] if i in sizes
    )
    rotary = sizes["rotary_cos"] + sizes["rotary_sin"]
    computed = quantized_weight_bytes(
        cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"],
        cfg["num_key_value_heads"], cfg["head_dim"], cfg["intermediate_size"], bits=4, block_size=32,
    )  # fmt: skip
    assert computed == written
    positions = cfg["max_position_embeddings"]
    assert rotary > 0 and sizes["rotary_cos"] == positions * cfg["head_dim"] // 2 * 4
    with_rotary = quantized_weight_bytes(
        cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"],
        cfg["num_key_value_heads"], cfg["head_dim"], cfg["intermediate_size"], bits=4, block_size=32,
        positions=positions,
    )  # fmt: skip
    assert with_rotary == written + rotary


def test_config_and_report_record_precision_method_and_agreement(quantized_repository: Path) -> None:
    facts = facts_of(quantized_repository / EMBEDDER)
    assert facts.precision is Precision.INT4
    assert facts.quantization_method == "rtn" and facts.quantization_block_size == 32
    assert facts.quantization_compute == "int8"  # the default --quant-compute, as the graph's accuracy_level 4
    agreement = facts.quantization_agreement
    assert agreement["worst_cosine"] >= THRESHOLDS[Precision.INT4]
    assert 0.8 <= agreement["overlap_at_10"] <= 1.0 and agreement["spearman"] >= 0.9
    report = json.loads((quantized_repository / EMBEDDER / "export_report.json").read_text())
    assert report["precision"] == "int4" and report["quantization"]["bits"] == 4
    assert report["quantization"]["compute"] == "int8" and report["quantization"]["accuracy_level"] == 4
    assert report["quantization"]["embedding"] == "fp16"
    assert report["quantization"]["activations"] == "fp32" and facts.quantization_activations == "fp32"
    assert report["retrieval"]["overlap_at_10"] == pytest.approx(agreement["overlap_at_10"], abs=1e-4)
    rr = facts_of(quantized_repository / RERANKER)
    assert rr.precision is Precision.INT8 and "worst_score_diff" in rr.quantization_agreement
    half = facts_of(quantized_repository / HALF)
    assert half.precision is Precision.INT4 and half.quantization_activations == "fp16"
    assert half.quantization_method == "rtn" and half.quantization_compute == "fp32"  # fp16's default compute
    assert half.quantization_agreement["worst_cosine"] >= THRESHOLDS[Precision.INT4]
    assert half.quantization_agreement["overlap_at_10"] >= 0.8 and half.quantization_agreement["spearman"] >= 0.9
    half_report = json.loads((quantized_repository / HALF / "export_report.json").read_text())
    assert half_report["quantization"]["activations"] == "fp16" and half_report["worst_cosine"] >= 0.98


def graph_embeddings(model_dir: Path, texts: list[str]) -> np.ndarray:
    """A repository's graph run in process (ONNX Runtime CPU), one text per run, as the served parity compares."""
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    return np.stack([onnx_embed(session, model_dir / "tokenizer", [t])[0] for t in texts])


def test_served_vectors_equal_the_graph_in_process_and_agree_with_fp32(
    quantized_repository: Path, quantized_facade: Facade, reference: SentenceTransformer
) -> None:
    texts = [QUERY_PREFIX + "What is the capital of China?", *DOCS]
    with grpc.insecure_channel(quantized_facade.target) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        response = stub.Embed(pb.EmbedRequest(inputs=texts), timeout=60)
        info = stub.GetInfo(pb.GetInfoRequest(), timeout=10)
    served = np.array([list(e.values) for e in response.embeddings], dtype=np.float32)
    model_dir = quantized_repository / EMBEDDER
    own = graph_embeddings(model_dir, texts)
    np.testing.assert_allclose(served, own, atol=1e-5)
    fp32 = reference.encode(texts, normalize_embeddings=True)
    cosines = np.sum(served * fp32, axis=1)
    assert cosines.min() >= THRESHOLDS[Precision.INT4], cosines
    assert cosines.max() < 0.99999  # the served graph is the quantized one, not an fp32 graph
    # The default embedding model (the fp32-activation one) and the reranker; HALF is the other embedding model.
    described = {m.kind: m for m in info.models if m.is_default}
    embedder, reranker = described[pb.MODEL_KIND_EMBEDDING], described[pb.MODEL_KIND_RERANKER]
    assert (embedder.precision, reranker.precision) == ("int4", "int8")
    facts = facts_of(model_dir)
    assert embedder.quantization.method == "rtn" and embedder.quantization.block_size == 32
    assert embedder.quantization.compute == "int8" and reranker.quantization.compute == "int8"
    assert embedder.quantization.activations == "fp32" and reranker.quantization.activations == "fp32"
    assert dict(embedder.quantization.agreement) == pytest.approx(facts.quantization_agreement)
    assert reranker.HasField("quantization") and "worst_score_diff" in reranker.quantization.agreement
    cards = httpx.get(f"{quantized_facade.base_url}/v1/models", timeout=10).json()["data"]
    card = next(c for c in cards if c["kind"] == "embedding")
    assert card["precision"] == "int4" and card["quantization"]["method"] == "rtn"
    assert card["quantization"]["compute"] == "int8" and card["quantization"]["activations"] == "fp32"
    assert card["quantization"]["agreement"] == pytest.approx(facts.quantization_agreement)


def test_float16_activations_are_served_as_the_graph_gives_them_and_agree_with_fp32(
    quantized_repository: Path, quantized_facade: Facade, reference: SentenceTransformer
) -> None:
    """The int4 graph with float16 activations, asked for by its Triton name: the served vectors are its own graph's
    in process (ONNX Runtime CPU), within the int4 gate of the fp32 reference, and not the fp32-activation int4
    graph's; GetInfo and /v1/models say fp16 activations."""
    texts = [QUERY_PREFIX + "What is the capital of China?", *DOCS]
    with grpc.insecure_channel(quantized_facade.target) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        response = stub.Embed(pb.EmbedRequest(inputs=texts, model=HALF), timeout=60)
        info = stub.GetInfo(pb.GetInfoRequest(), timeout=10)
    served = np.array([list(e.values) for e in response.embeddings], dtype=np.float32)
    own = graph_embeddings(quantized_repository / HALF, texts)
    np.testing.assert_allclose(served, own, atol=1e-5)
    fp32 = reference.encode(texts, normalize_embeddings=True)
    cosines = np.sum(served * fp32, axis=1)
    assert cosines.min() >= THRESHOLDS[Precision.INT4], cosines
    other = graph_embeddings(quantized_repository / EMBEDDER, texts)
    assert np.abs(served - other).max() > 1e-4  # another graph than the fp32-activation one
    (half,) = [m for m in info.models if m.kind == pb.MODEL_KIND_EMBEDDING and not m.is_default]
    assert half.precision == "int4" and half.quantization.activations == "fp16"
    assert half.quantization.compute == "fp32" and half.quantization.method == "rtn"
    cards = httpx.get(f"{quantized_facade.base_url}/v1/models", timeout=10).json()["data"]
    activations = sorted(c["quantization"]["activations"] for c in cards if c["kind"] == "embedding")
    assert activations == ["fp16", "fp32"]


def test_float16_activations_reach_attention_and_the_quantized_layers(
    quantized_repository: Path, dev_model_dir: Path
) -> None:
    """The GPU placement guarantee that can be checked without a GPU: in the fp16-activation graph every
    GroupQueryAttention takes float16 query / key / value / rotary caches and every MatMulNBits float16
    activations and scales (ONNX Runtime's CUDA provider has GroupQueryAttention kernels for float16 / bfloat16
    only: a float32 one runs on the CPU provider). The types are the ones ONNX Runtime itself produces: those
    inputs are fetched as extra outputs of one real run. The output stays float32, and the written size is
    export/memory.py's with float16 scales and caches."""
    from export.memory import quantized_weight_bytes
    from export.quantize import half_placement_errors

    path = quantized_repository / HALF / "1" / "model.onnx"
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulNBits") == 8 and "MatMul" not in ops and ops.count("GroupQueryAttention") == 2
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    # Float compute (no accuracy_level): int8 compute is refused with float16 activations (inaccurate on CPU).
    assert not any(a.name == "accuracy_level" for n in nbits for a in n.attribute)
    checked = sorted(
        {n.input[i] for n in model.graph.node if n.op_type == "GroupQueryAttention" for i in (0, 1, 2, 7, 8)}
        | {n.input[0] for n in nbits}
    )
    inits = {t.name: t for t in model.graph.initializer}
    fetched = [name for name in checked if name not in inits]
    # Per layer: q, k, v and the inputs of its four MatMulNBits (two norms' outputs, attention's, the MLP product).
    assert len(fetched) == 2 * 7
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in fetched)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = np.array([[9707, 11, 1879, 0, 0]], dtype=np.int64)
    mask = np.array([[1, 1, 1, 0, 0]], dtype=np.int64)
    outputs = session.run(None, {INPUT_IDS: ids, ATTENTION_MASK: mask})
    assert outputs[0].dtype == np.float32  # the embedding, as every export's
    assert {name: out.dtype for name, out in zip(fetched, outputs[1:], strict=True)} == {
        name: np.dtype(np.float16) for name in fetched
    }
    for name in checked:
        if name in inits:  # the rotary caches
            assert inits[name].data_type == onnx.TensorProto.FLOAT16, name
    assert all(inits[n.input[2]].data_type == onnx.TensorProto.FLOAT16 for n in nbits)  # scales
    assert inits["embed_tokens.weight"].data_type == onnx.TensorProto.FLOAT16
    # The export's own check agrees, and tells the CPU graph (float32 attention) apart.
    assert half_placement_errors(model) == []
    cpu_graph = onnx.load(str(quantized_repository / EMBEDDER / "1" / "model.onnx"))
    assert any("GroupQueryAttention" in e and "FLOAT" in e for e in half_placement_errors(cpu_graph))
    cfg = json.loads((dev_model_dir / "config.json").read_text())
    sizes = {t.name: numpy_helper.to_array(t).nbytes for t in model.graph.initializer}
    written = sizes["embed_tokens.weight"] + sizes["rotary_cos"] + sizes["rotary_sin"] + sum(
        sizes[i] for n in nbits for i in n.input[1:] if i in sizes
    )
    computed = quantized_weight_bytes(
        cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"],
        cfg["num_key_value_heads"], cfg["head_dim"], cfg["intermediate_size"], bits=4, block_size=32,
        positions=cfg["max_position_embeddings"], float_itemsize=2,
    )  # fmt: skip
    assert computed == written


def test_served_reranker_scores_equal_the_graph_in_process(
    quantized_repository: Path, quantized_facade: Facade
) -> None:
    from tokenizers import Tokenizer

    query, docs = "What is the capital of China?", ["The capital of China is Beijing.", "Gravity attracts bodies."]
    with grpc.insecure_channel(quantized_facade.target) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        response = stub.Rerank(pb.RerankRequest(query=query, documents=docs), timeout=60)
    served = {r.index: r.score for r in response.results}
    model_dir = quantized_repository / RERANKER
    tok = Tokenizer.from_file(str(model_dir / "tokenizer" / "tokenizer.json"))
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    for i, doc in enumerate(docs):
        ids = np.asarray([rerank_ids(tok, query, doc, 512)], dtype=np.int64)
        logits = session.run([RERANK_LOGITS], {INPUT_IDS: ids, ATTENTION_MASK: np.ones_like(ids)})[0][0]
        assert served[i] == pytest.approx(float(rerank_score(logits)), abs=1e-5)


def test_a_zeroed_scale_is_refused_by_the_export_gate(
    dev_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An injected defect after quantization (one layer's scales zeroed: that layer's output vanishes) must fail
    verification: exit 2, one clear message, nothing published."""
    real = quantize.quantize_graph

    def broken(onnx_path: Path, settings: quantize.QuantSettings, calibration: object = ()) -> int:
        done = real(onnx_path, settings, calibration)  # type: ignore[arg-type]
        model = onnx.load(str(onnx_path))
        scales = next(t for t in model.graph.initializer if t.name.endswith("mlp.down_proj.weight_scales"))
        scales.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(scales)), scales.name))
        onnx.save_model(model, str(onnx_path))
        return done

    monkeypatch.setattr(quantize, "quantize_graph", broken)
    args = [
        "export",
        "--model",
        str(dev_model_dir),
        "--output",
        str(tmp_path),
        "--precision",
        "int4",
        "--max-tokens",
        "512",
        "--verify-long-tokens",
        "256",
        "--skip-resource-check",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "verification failed" in result.output and "nothing was written" in result.output
    assert not (tmp_path / EMBEDDER).exists()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--precision", "int4"], 0, "nothing to export"),  # rtn, block 32: the defaults, as published
        (["--precision", "int4", "--quant-method", "rtn", "--quant-block-size", "32"], 0, "nothing to export"),
        (["--precision", "int4", "--quant-method", "gptq"], 2, "quantization method rtn (asked: gptq)"),
        (["--precision", "int4", "--quant-block-size", "128"], 2, "quantization block size 32 (asked: 128)"),
        (["--precision", "int8"], 2, "precision int4 (asked: int8)"),
        (["--precision", "int4", "--quant-compute", "int8"], 0, "nothing to export"),
        (["--precision", "int4", "--quant-compute", "fp32"], 2, "quantization compute int8 (asked: fp32)"),
        (["--precision", "int4", "--quant-activations", "fp32"], 0, "nothing to export"),
        (["--precision", "int4", "--quant-activations", "fp16"], 2, "quantization activations fp32 (asked: fp16)"),
    ],
)
def test_skip_if_published_compares_the_quantization(
    quantized_repository: Path, dev_model_dir: Path, tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    """A published int4 rtn export is skipped only for the same request: an int4 gptq (or another block size, or
    fp32 compute instead of int8) request must not be answered by the rtn weights; it stops with exit 2 and
    leaves the published one alone."""
    (tmp_path / EMBEDDER).mkdir()
    published = (quantized_repository / EMBEDDER / "config.pbtxt").read_text()
    (tmp_path / EMBEDDER / "config.pbtxt").write_text(published)
    result = CliRunner().invoke(
        app,
        ["export", "--model", str(dev_model_dir), "--output", str(tmp_path), "--name", EMBEDDER,
         "--skip-if-published", *args],
    )  # fmt: skip
    assert result.exit_code == code, result.output
    assert message in " ".join(result.output.split())
    assert (tmp_path / EMBEDDER / "config.pbtxt").read_text() == published
    assert sorted(p.name for p in (tmp_path / EMBEDDER).iterdir()) == ["config.pbtxt"]  # nothing exported


def test_a_published_export_without_its_compute_mode_is_not_the_same(
    quantized_repository: Path, dev_model_dir: Path, tmp_path: Path
) -> None:
    """A quantized config.pbtxt written before quantization_compute existed: which kernels its graph asks for is
    not recorded, so an int4 request (int8 compute by default) is not known to be answered by it: exit 2."""
    published = (quantized_repository / EMBEDDER / "config.pbtxt").read_text()
    config = parse_pbtxt(published)
    assert config.parameters["quantization_compute"].string_value == "int8"
    del config.parameters["quantization_compute"]
    (tmp_path / EMBEDDER).mkdir()
    (tmp_path / EMBEDDER / "config.pbtxt").write_text(text_format.MessageToString(config))
    result = CliRunner().invoke(
        app,
        ["export", "--model", str(dev_model_dir), "--output", str(tmp_path), "--name", EMBEDDER,
         "--skip-if-published", "--precision", "int4"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "quantization compute ? (asked: int8)" in " ".join(result.output.split())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--precision", "int8", "--quant-method", "hqq"], "not available for int8"),
        (["--precision", "int4", "--quant-block-size", "48"], "--quant-block-size must be one of"),
        (["--precision", "int4", "--attention", "eager"], "needs the fused graph"),
        (["--min-cosine", "1.5"], "--min-cosine must be within"),
        (["--quant-activations", "fp16"], "--quant-activations applies to --precision int8/int4, not fp32"),
        (["--precision", "int4", "--quant-activations", "bf16"], "--quant-activations must be one of fp32, fp16"),
        (
            ["--precision", "int4", "--quant-activations", "fp16", "--quant-compute", "int8"],
            "--quant-compute int8 is refused with --quant-activations fp16",
        ),
        (["--min-spearman", "-0.5"], "--min-spearman must be within"),
    ],
)
def test_bad_quantization_options_are_refused(
    dev_model_dir: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(app, ["export", "--model", str(dev_model_dir), "--output", str(tmp_path), *args])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output


def test_the_spearman_minimum_can_be_raised(dev_model_dir: Path, tmp_path: Path) -> None:
    """--min-spearman overrides the precision's own minimum (int8: 0.99): asking more than int8 rtn reaches on the
    dev model (Spearman 0.9988 measured) refuses the export and names the figure."""
    args = ["export", "--model", str(dev_model_dir), "--output", str(tmp_path), "--precision", "int8",
            "--min-spearman", "0.99999", "--skip-resource-check", "--no-warmup"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "needs >= 0.99999" in " ".join(result.output.split()), result.output
    assert not list(tmp_path.rglob("config.pbtxt")), "a refused export publishes nothing"


def test_gptq_with_the_users_calibration_file(dev_reranker_dir: Path, tmp_path: Path) -> None:
    """The data-aware method on the reranker path, calibrated on the user's own texts, with float compute: it passes
    the score gate and records its method; the graph it writes is MatMulNBits with the agreement it measured."""
    texts = tmp_path / "calibration.txt"
    texts.write_text(
        "Which river flows through Vienna?\nThe Danube flows through Vienna.\n\ndef f(x):\\n    return x\n"
    )
    out = tmp_path / "repo"
    args = ["export", "--model", str(dev_reranker_dir), "--output", str(out), "--precision", "int8",
            "--quant-method", "gptq", "--calibration-file", str(texts), "--max-tokens", "512",
            "--verify-long-tokens", "256", "--skip-resource-check", "--quant-compute", "fp32"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "on 3 calibration texts" in " ".join(result.output.split())
    nodes = onnx.load(str(out / RERANKER / "1" / "model.onnx")).graph.node
    # --quant-compute fp32: no accuracy_level (ONNX Runtime's default: float compute).
    assert not any(a.name == "accuracy_level" for n in nodes if n.op_type == "MatMulNBits" for a in n.attribute)
    facts = facts_of(out / RERANKER)
    assert facts.precision is Precision.INT8 and facts.quantization_method == "gptq"
    assert facts.quantization_agreement["worst_score_diff"] <= 5e-2
    ops = [n.op_type for n in onnx.load(str(out / RERANKER / "1" / "model.onnx")).graph.node]
    assert ops.count("MatMulNBits") == 8


def test_an_empty_calibration_file_is_refused(dev_model_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    args = [
        "export",
        "--model",
        str(dev_model_dir),
        "--output",
        str(tmp_path / "repo"),
        "--precision",
        "int4",
        "--quant-method",
        "gptq",
        "--calibration-file",
        str(empty),
        "--skip-resource-check",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "holds no text" in " ".join(result.output.split()), result.output


def test_the_commands_of_the_docs_section_export_and_pass_the_gate(
    dev_model_dir: Path, dev_reranker_dir: Path, tmp_path: Path
) -> None:
    """docs/export.md "Quantized models": each `qwen3-embed export` line, on the dev checkpoint of its kind (the
    hub ids are swapped for them; shorter verification inputs keep it fast)."""
    import shlex

    from tests.doc_pages import section, shell_lines

    lines = shell_lines(section("docs/export.md", "## Quantized models"), "qwen3-embed")
    assert len(lines) == 4, lines
    calibration = tmp_path / "my-texts.txt"
    # A user's file as the docs describe it: one text per line, "\n" for newlines (the built-in texts, written out;
    # two short texts were too few: the dev reranker's int4 gptq then missed the gate, 0.14 > 0.1).
    calibration.write_text("".join(t.replace("\n", "\\n") + "\n" for t in CALIBRATION_TEXTS))
    for n, line in enumerate(lines):
        args = shlex.split(line)[1:]
        model = args[args.index("--model") + 1]
        args[args.index("--model") + 1] = str(dev_reranker_dir if "Reranker" in model else dev_model_dir)
        if "--calibration-file" in args:
            args[args.index("--calibration-file") + 1] = str(calibration)
        out = tmp_path / f"repo{n}"
        args += ["--output", str(out), "--max-tokens", "512", "--verify-long-tokens", "256", "--skip-resource-check"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, f"{line}\n{result.output}"
        (model_dir,) = [p for p in out.iterdir() if p.is_dir()]
        assert str(facts_of(model_dir).precision) == args[args.index("--precision") + 1]
        activations = args[args.index("--quant-activations") + 1] if "--quant-activations" in args else "fp32"
        assert facts_of(model_dir).quantization_activations == activations
