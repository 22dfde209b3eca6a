"""The retrieval set a quantized export's neighbours are checked on: queries with the instruction, documents of
several scripts, code and lengths, a few relevant to each query and many distractors. Written for this project."""

from __future__ import annotations

from export.prompts import OFFICIAL_PROMPTS

_QUERY = OFFICIAL_PROMPTS["query"]

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

