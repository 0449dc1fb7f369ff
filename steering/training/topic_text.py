"""Corpus text about a topic the offline packages barely cover, written by the model itself.

The offline corpus (see `corpus`) holds one paragraph about the Golden Gate Bridge;
a dictionary cannot learn a concept it almost never sees. This module asks the
chat model a list of questions about the topic and keeps its answers as chat
documents (question -> answer), the way the corpus renders its other chats:

    for each question q (one per line of the questions file) and sample s < S:
        answer(q, s) = model.generate(chat(q), temperature T, seed = seed + s)

Output: a JSON-lines file, one {"id", "question", "answer", "seed"} object per
answer (and "system" when a system prompt asked for a style), read back by
`corpus.load_topics`. Generation is batched with left padding; each batch's
sampling is seeded, so a file is reproduced by the same command on the same
model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import torch

from steering.chat_template import chat_text
from steering.errors import ParameterError


def read_questions(path: str | Path) -> list[str]:
    """Non-empty lines of a questions file, '#' lines left out."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.no_grad()
def write_topic_answers(model: Any, tokenizer: Any, questions: list[str], out: str | Path, *, samples: int = 6,
                        max_tokens: int = 160, temperature: float = 0.9, seed: int = 0, batch_size: int = 16,
                        system: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Generate `samples` answers per question into `out` (JSON lines); returns counts.

    `system`: a system prompt for the generation only (e.g. a speaking style); the stored document is
    the question and the answer, so the corpus holds the style without the instruction that asked for it.

    Shapes: each batch is [B, T] token ids, left-padded; answers are the new
    tokens up to the first end-of-turn token.
    """
    for name, value in (("samples", samples), ("max_tokens", max_tokens), ("batch_size", batch_size)):
        if value < 1:
            raise ParameterError(f"{name} must be positive, got {value}", name)
    jobs = [(q_i, s) for s in range(samples) for q_i in range(len(questions))]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    written = tokens = 0
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with out.open("w", encoding="utf-8") as fh:
            for b, batch in enumerate(_batches(jobs, batch_size)):
                head = [{"role": "system", "content": system}] if system else []
                texts = [chat_text(tokenizer, head + [{"role": "user", "content": questions[q]}]) for q, _ in batch]
                enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
                with torch.random.fork_rng(devices=[]):  # seeded per batch, the caller's generator untouched
                    torch.manual_seed(seed + b)
                    gen = model.generate(**enc, do_sample=temperature > 0, temperature=temperature or None,
                                         top_p=None, top_k=None, max_new_tokens=max_tokens, pad_token_id=pad)
                new = gen[:, enc["input_ids"].shape[1]:]
                for (q, s), ids in zip(batch, new):
                    answer = tokenizer.decode(ids, skip_special_tokens=True).strip()
                    if not answer:
                        continue
                    fh.write(json.dumps({"id": f"q{q}-s{s}", "question": questions[q], "answer": answer,
                                         "seed": seed + b, **({"system": system} if system else {})}) + "\n")
                    written += 1
                    tokens += int((ids != pad).sum())
                if progress:
                    print(f"\r{min((b + 1) * batch_size, len(jobs))}/{len(jobs)} answers", end="", flush=True)
    finally:
        tokenizer.padding_side = side
    if progress:
        print()
    return {"questions": len(questions), "answers": written, "answer_tokens": tokens, "out": str(out)}
