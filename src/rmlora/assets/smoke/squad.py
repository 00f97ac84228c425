"""A smoke copy of rajpurkar/squad (config plain_text): id, title, context, question, answers = Sequence({text,
answer_start}), splits train and validation; validation questions have several gold answers, as SQuAD v1.1's dev set.

Each article is one paragraph of corpus words (4 to 30 filler words, then a sentence naming a person, a city and a
year) with three questions whose answers are spans of it, found by their character offsets.
"""

from __future__ import annotations

import random

from datasets import Features, Sequence, Value

from rmlora.assets.smoke.corpus import FILLER, NAMES, NEUTRAL
from rmlora.assets.smoke.hub_repo import HubRepo

FEATURES = Features(
    {
        "id": Value("string"),
        "title": Value("string"),
        "context": Value("string"),
        "question": Value("string"),
        "answers": Sequence({"text": Value("string"), "answer_start": Value("int32")}),
    }
)
ARTICLES = {"train": 8, "validation": 4}  # three questions each


def squad_articles(rng: random.Random, n_articles: int, multi_answers: bool) -> list[dict]:
    """SQuAD v1.1's nesting: [{"title", "paragraphs": [{"context", "qas": [{"id", "question", "answers"}]}]}]."""
    articles = []
    qid = 0
    for a in range(n_articles):
        city, person, year = rng.choice(NAMES[:3]), rng.choice(NAMES[3:6]), rng.choice(NAMES[6:8])
        filler = " ".join(rng.choice(FILLER + NEUTRAL) for _ in range(rng.randrange(4, 30)))
        context = f"{filler} {person} was in {city} in {year} . it was a very good day and {person} did love the food ."
        qas = []
        for question, answer in (
            (f"where was {person} in {year} ?", city),
            (f"who was in {city} in {year} ?", person),
            (f"what did {person} love ?", "the food"),
        ):
            start = context.index(f" {answer} ") + 1 if f" {answer} " in context else context.index(answer)
            answers = [{"text": answer, "answer_start": start}]
            if multi_answers:
                # several annotators: the same span, and one with an article or a longer span
                answers.append({"text": answer, "answer_start": start})
                if answer == "the food":
                    answers.append({"text": "food", "answer_start": start + 4})
                else:
                    longer = context.index(f"in {answer}") if f"in {answer}" in context else start
                    answers.append({"text": context[longer : start + len(answer)], "answer_start": longer})
            qas.append({"id": f"q{qid:04d}", "question": question, "answers": answers})
            qid += 1
        articles.append({"title": f"article {a}", "paragraphs": [{"context": context, "qas": qas}]})
    return articles


def flatten(articles: list[dict], id_prefix: str = "") -> dict:
    """The hub's columns (one row per question) from SQuAD's nesting."""
    rows = {k: [] for k in FEATURES}
    for article in articles:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                rows["id"].append(f"{id_prefix}{qa['id']}")
                rows["title"].append(article["title"])
                rows["context"].append(paragraph["context"])
                rows["question"].append(qa["question"])
                rows["answers"].append(
                    {
                        "text": [a["text"] for a in qa["answers"]],
                        "answer_start": [a["answer_start"] for a in qa["answers"]],
                    }
                )
    return rows


def write_squad(path: str, articles: dict | None = None, seed: int = 12) -> str:
    """The repository in `path`: plain_text/{train,validation}-00000-of-00001.parquet and README.md."""
    rng = random.Random(seed)
    splits = {
        split: flatten(squad_articles(rng, n, multi_answers=split != "train"), id_prefix=split[:1])
        for split, n in (articles or ARTICLES).items()
    }
    repo = HubRepo(path)
    repo.add("plain_text", "plain_text", splits, FEATURES)
    repo.finish("SQuAD")
    return path
