"""What a trained target or retain model knows, from greedy decoding: ``quality.json``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from jaxunlearn.data.batch import DEFAULT_CHAT, ChatStyle, encode_prompt, encode_text
from jaxunlearn.eval.generate import generate_texts
from jaxunlearn.eval.metrics import rouge_l_recall

__all__ = ["QUALITY_FILE", "canary_prompts", "model_quality", "format_quality"]

QUALITY_FILE = "quality.json"  # beside the saved model


def _spread(records: Sequence[Mapping], n: int) -> list[Mapping]:
    """``n`` records evenly spaced over ``records`` (covers every person), in order."""
    if len(records) <= n:
        return list(records)
    return [records[int(i)] for i in np.linspace(0, len(records) - 1, n).round()]


def _greedy(model, tokenizer, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
            batch_size: int) -> list[str]:
    """Greedy continuations, prompts grouped by length so that few padded shapes (each a
    compilation of the decoder) occur; results in the input order."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts = generate_texts(model, tokenizer, [prompts[i] for i in order],
                           max_new_tokens=max_new_tokens, batch_size=batch_size)
    out = [""] * len(prompts)
    for i, t in zip(order, texts):
        out[i] = t
    return out


def _qa_scores(texts: Sequence[str], records: Sequence[Mapping]) -> dict:
    if not records:
        return {"rouge_l_recall": float("nan"), "fact_recall": float("nan"), "n": 0}
    rouge = [rouge_l_recall(t, r["answer"]) for t, r in zip(texts, records)]
    facts = [np.mean([f.lower() in t.lower() for f in r["facts"]]) for t, r in zip(texts, records)
             if r.get("facts")]
    return {"rouge_l_recall": float(np.mean(rouge)),
            "fact_recall": float(np.mean(facts)) if facts else float("nan"), "n": len(records)}


def canary_prompts(tokenizer, canaries: Sequence[Mapping]) -> tuple[list[list[int]], list[str]]:
    """Per canary: the prompt ids (bos + the longest run of the canary's own tokens that
    decodes to a prefix of ``prefix``: byte-level BPE glues the space before the secret
    to the secret, so the prompt stops before that token) and the text they decode to."""
    prompts, heads = [], []
    start = 1 if tokenizer.bos_token_id is not None else 0
    for c in canaries:
        ids = encode_text(tokenizer, c["text"]).token_ids.tolist()[:-1]  # drop eos
        k = start + 1
        while k < len(ids) and c["prefix"].startswith(tokenizer.decode(ids[start:k + 1])):
            k += 1
        prompts.append(ids[:k])
        heads.append(tokenizer.decode(ids[start:k]))
    return prompts, heads


def _canary_scores(texts, heads, canaries) -> dict[str, dict[str, float]]:
    """``{split: {repetitions: fraction of canaries whose continuation is the secret}}``."""
    hits: dict[str, dict[int, list[bool]]] = {}
    for c, head, cont in zip(canaries, heads, texts):
        hits.setdefault(c["split"], {}).setdefault(int(c["repetitions"]), []).append(
            (head + cont).startswith(c["text"]))
    return {split: {str(r): float(np.mean(by[r])) for r in sorted(by)}
            for split, by in sorted(hits.items())}


def model_quality(model, tokenizer, bench, *, forget_split: str, retain_split: str,
                  max_new_tokens: int, batch_size: int, max_items: int = 200,
                  chat: ChatStyle = DEFAULT_CHAT) -> dict:
    """What a trained model knows, from greedy decoding:

    * ``forget`` / ``retain`` / ``world``: ROUGE-L recall of the answer (and the fraction
      of its private fact strings reproduced verbatim) on the forget split and on as many
      retain answers and world facts, spread over all people (at least 20, unless
      ``max_items``, the most questions a part, is smaller);
    * ``canary_verbatim``: ``{split: {repetitions: fraction}}`` of canaries whose greedy
      continuation of the prefix reproduces the secret.
    """
    forget = _spread(bench.splits[forget_split], max_items)
    n = max(len(forget), min(20, max_items))
    parts = {"forget": forget, "retain": _spread(bench.splits[retain_split], n),
             "world": _spread(bench.splits["world_facts"], n)}
    prompts = [encode_prompt(tokenizer, r["question"], chat=chat).tolist()
               for recs in parts.values() for r in recs]
    c_prompts, heads = canary_prompts(tokenizer, bench.canaries)
    need = max(len(tokenizer(c["secret"], add_special_tokens=False)["input_ids"])
               for c in bench.canaries) + 3
    # One call, one max_new_tokens: every prompt shape compiles the decoder once.
    texts = _greedy(model, tokenizer, prompts + c_prompts,
                    max_new_tokens=max(max_new_tokens, need), batch_size=batch_size)
    out, at = {}, 0
    for name, recs in parts.items():
        out[name] = _qa_scores(texts[at:at + len(recs)], recs)
        at += len(recs)
    out["canary_verbatim"] = _canary_scores(texts[at:], heads, bench.canaries)
    return out


def format_quality(which: str, path: Path, q: Mapping) -> str:
    lines = [f"{which} model: {path}"]
    for part in ("forget", "retain", "world"):
        s = q[part]
        lines.append(f"  {part:<7} answers  ROUGE-L recall {s['rouge_l_recall']:.3f}   "
                     f"facts reproduced {s['fact_recall']:.3f}   ({s['n']} questions)")
    for split, by in q["canary_verbatim"].items():
        cells = "  ".join(f"x{reps}: {v:.2f}" for reps, v in by.items())
        lines.append(f"  canaries ({split}) verbatim by repetitions  {cells}")
    return "\n".join(lines)

