"""Built-in texts of quantized exports: the calibration inputs of the data-aware method (gptq), and the retrieval
set the quantized graph's neighbours are checked on (queries with the instruction, documents of several scripts,
code and lengths, a few relevant to each query and many distractors). Written for this project; a user's own
calibration texts come from --calibration-file."""

from __future__ import annotations

from pathlib import Path

from export.errors import ExportError
from export.prompts import OFFICIAL_PROMPTS

_QUERY = OFFICIAL_PROMPTS["query"]

# Calibration (gptq): what the linear layers will see in service, so the data-aware method weighs the input
# channels that matter (multilingual, code, instructed queries, long documents).
CALIBRATION_TEXTS: tuple[str, ...] = (
    _QUERY + "how do I rotate a log file without restarting the process",
    _QUERY + "symptoms of vitamin D deficiency in adults",
    _QUERY + "¿cuál es la diferencia entre un virus y una bacteria?",
    _QUERY + "如何在 Python 中读取大文件而不占用太多内存",
    _QUERY + "beste Reisezeit für Island",
    "Die Photosynthese wandelt Lichtenergie in chemische Energie um; Pflanzen binden dabei Kohlendioxid.",
    "東京は日本の首都であり、世界で最も人口の多い都市圏の一つです。",
    "La Révolution française a commencé en 1789 et a profondément transformé la société.",
    "Москва — столица России и крупнейший по численности населения город страны.",
    "भारत की राजधानी नई दिल्ली है, जो यमुना नदी के किनारे स्थित है।",
    "SELECT customer_id, SUM(amount) AS total FROM orders WHERE created_at >= '2024-01-01' GROUP BY customer_id;",
    "func (s *Server) Shutdown(ctx context.Context) error {\n\ts.mu.Lock()\n\tdefer s.mu.Unlock()\n"
    "\treturn s.ln.Close()\n}",
    "fn parse(input: &str) -> Result<Vec<u32>, ParseIntError> {\n    input.split(',').map(str::parse).collect()\n}",
    "A hash map stores key-value pairs and finds a key in expected constant time by hashing it to a bucket.",
    (
        "Retrieval-augmented generation first searches a document collection for passages relevant to a question, "
        "then gives those passages to a language model as context. The quality of the answer depends on the "
        "retriever: if the right passage is not among the top results, the model cannot use it. Embedding models "
        "map questions and passages into one vector space, where nearness stands for relevance. Indexes store "
        "millions of such vectors and answer nearest-neighbour queries in milliseconds with approximate methods "
        "such as HNSW graphs or inverted files with product quantization. Evaluations report recall at ten, the "
        "share of relevant passages found among the first ten results, and nDCG, which also rewards their order. "
    )
    * 4,
)

# The retrieval check: each query's top-10 neighbours among DOCUMENTS, quantized graph vs the fp32 reference.
RETRIEVAL_QUERIES: tuple[str, ...] = tuple(
    _QUERY + q
    for q in (
        "what is the capital of France",
        "how to sort a list in python",
        "causes of the first world war",
        "wie funktioniert ein Elektromotor",
        "光合作用的过程是什么",
        "benefits of regular exercise",
        "how does a transformer neural network work",
        "recette de la ratatouille",
    )
)
DOCUMENTS: tuple[str, ...] = (
    "Paris is the capital and most populous city of France.",
    "Lyon is known for its cuisine and its historical and architectural landmarks.",
    "Berlin became the capital of reunified Germany in 1990.",
    "sorted(items) returns a new list; items.sort() sorts the list in place.",
    "def bubble_sort(a):\n    for i in range(len(a)):\n        for j in range(len(a) - i - 1):\n"
    "            if a[j] > a[j + 1]:\n                a[j], a[j + 1] = a[j + 1], a[j]",
    "The assassination of Archduke Franz Ferdinand in 1914 set off the First World War.",
    "Alliances, militarism and nationalism drew the European powers into war.",
    "The Treaty of Versailles ended the war with Germany in 1919.",
    "Ein Elektromotor wandelt elektrische Energie über magnetische Felder in Bewegung um.",
    "Der Rhein ist einer der längsten Flüsse Europas.",
    "光合作用是植物利用光能把二氧化碳和水转化为葡萄糖和氧气的过程。",
    "长城是中国古代的军事防御工程。",
    "Regular physical activity lowers the risk of heart disease and improves mood.",
    "Sleep deprivation impairs memory and concentration.",
    "A balanced diet includes vegetables, whole grains and protein.",
    "The transformer architecture relies on self-attention instead of recurrence.",
    "Convolutional networks share weights across positions of an image.",
    "Attention weights are a softmax over scaled dot products of queries and keys.",
    "La ratatouille est un plat provençal de légumes mijotés : aubergines, courgettes, poivrons, tomates.",
    "Le croissant est une viennoiserie au beurre.",
    "The Amazon rainforest produces a large share of the world's oxygen.",
    "Mount Everest is the highest mountain above sea level.",
    "Bitcoin is a decentralised digital currency.",
    "The stock market fell sharply after the announcement.",
    "Vaccines train the immune system to recognise a pathogen.",
    "JavaScript promises represent the eventual result of an asynchronous operation.",
    "git rebase rewrites commits on top of another base branch.",
    "Kubernetes schedules containers onto nodes of a cluster.",
    "The Great Barrier Reef is the world's largest coral reef system.",
    "Shakespeare wrote Hamlet around 1600.",
    "Water boils at 100 degrees Celsius at sea level.",
    "東京タワーは1958年に完成した電波塔です。",
)



def calibration_texts(path: Path | None) -> list[str]:
    """The built-in texts, or the user's file: one text per line (blank lines skipped; a literal \\n inside a
    line stands for a newline, so code and long documents fit on one line)."""
    if path is None:
        return list(CALIBRATION_TEXTS)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"--calibration-file {path}: {exc}") from exc
    texts = [line.replace("\\n", "\n") for line in lines if line.strip()]
    if not texts:
        raise ExportError(f"--calibration-file {path} holds no text (one text per line)")
    return texts
