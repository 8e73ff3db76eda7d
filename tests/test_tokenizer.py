"""jaxunlearn.data.tokenizer: deterministic byte-level BPE, fixed specials, chat template."""

import hashlib
import random
import subprocess
import sys
from pathlib import Path

import pytest

from jaxunlearn.errors import DataError
from jaxunlearn.data.tokenizer import (
    BOS_ID,
    CHAT_TEMPLATE,
    EOS_ID,
    PAD_ID,
    corpus_texts,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)

CITIES = ["Oslo", "Lima", "Pune", "Graz", "Tartu", "Cork", "Bern", "Nice"]
TEXTS = [
    f"Question: Where was person {i} born?\nAnswer: Person {i} was born in {CITIES[i % 8]} "
    f"on {i % 28 + 1} May {1900 + 3 * i}; e-mail p{i}@mail.example, phone 555-{1000 + 7 * i}."
    for i in range(120)
]


def digest(tok):
    return hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest()


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=400)


def test_special_tokens_have_fixed_ids(tok):
    assert (BOS_ID, EOS_ID, PAD_ID) == (0, 1, 2)
    assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<|bos|>", "<|eos|>", "<|pad|>"]
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2)
    # Plain encoding adds no special token by itself; the batch builder places them.
    assert BOS_ID not in tok("Oslo", add_special_tokens=False)["input_ids"]


def test_vocab_size_is_reached_on_a_rich_corpus_and_never_exceeded(tok):
    assert len(tok) == 400
    small = train_tokenizer(["ab ab ab"], vocab_size=2048)
    assert 259 <= len(small) < 2048  # 256 bytes + 3 specials, few merges available


def test_training_is_deterministic_and_order_free(tok):
    again = train_tokenizer(TEXTS, vocab_size=400)
    assert digest(again) == digest(tok)
    shuffled = TEXTS[:]
    random.Random(3).shuffle(shuffled)
    assert digest(train_tokenizer(shuffled, vocab_size=400)) == digest(tok)
    assert digest(train_tokenizer(TEXTS, vocab_size=380)) != digest(tok)


def test_training_is_identical_in_a_fresh_process(tok):
    # Another interpreter has other hash seeds; the vocabulary must not depend on them.
    code = (
        "import hashlib, sys; sys.path.insert(0, 'tests'); from test_tokenizer import TEXTS;"
        "from jaxunlearn.data.tokenizer import train_tokenizer;"
        "t = train_tokenizer(TEXTS, vocab_size=400);"
        "print(hashlib.sha256(t.backend_tokenizer.to_str().encode()).hexdigest())"
    )
    env = {"PYTHONHASHSEED": "12345", "HF_HUB_OFFLINE": "1", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1], env=env)
    assert out.stdout.strip() == digest(tok)


def test_byte_level_round_trip_of_unseen_characters(tok):
    for s in ["Åsa Lind, née Øberg — 42 °C ✓ 😀", "  two  spaces\tand tab\n", "Tartu 1903"]:
        assert tok.decode(tok(s, add_special_tokens=False)["input_ids"]) == s


def test_chat_template_renders_the_documented_prompt(tok):
    q = "Where was Åsa born?"
    text = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
    assert text == f"<|bos|>Question: {q}\nAnswer: "
    ids = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                  tokenize=True, return_dict=False)
    assert ids == [BOS_ID] + tok(f"Question: {q}\nAnswer: ", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    convo = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q1?"},
             {"role": "assistant", "content": "A1."}, {"role": "user", "content": "Q2?"}]
    assert (tok.apply_chat_template(convo, add_generation_prompt=True, tokenize=False)
            == "<|bos|>Be brief.\nQuestion: Q1?\nAnswer: A1.<|eos|>Question: Q2?\nAnswer: ")
    with pytest.raises(Exception, match="chat role must be"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_save_and_load_round_trip(tok, tmp_path):
    save_tokenizer(tok, tmp_path / "tk")
    back = load_tokenizer(tmp_path / "tk")
    assert back.chat_template == CHAT_TEMPLATE
    assert (back.bos_token_id, back.eos_token_id, back.pad_token_id) == (0, 1, 2)
    assert back.get_vocab() == tok.get_vocab()
    s = "Person 7 was born in Cork."
    assert back(s, add_special_tokens=False)["input_ids"] == tok(s, add_special_tokens=False)["input_ids"]
    msgs = [{"role": "user", "content": "Who?"}]
    assert (back.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
            == tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False))
    with pytest.raises(DataError, match="no tokenizer.json"):
        load_tokenizer(tmp_path / "missing")


@pytest.mark.parametrize("kwargs, field", [
    ({"vocab_size": 100}, "vocab_size"), ({"vocab_size": 300.0}, "vocab_size"),
    ({"min_frequency": 0}, "min_frequency"),
])
def test_bad_arguments_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        train_tokenizer(["some text"], **kwargs)


def test_bad_corpus():
    with pytest.raises(ValueError, match="texts: empty corpus"):
        train_tokenizer([])
    with pytest.raises(ValueError, match=r"texts\[1\]: expected a string"):
        train_tokenizer(["ok", 3])


def test_corpus_texts_collects_every_answer_form_in_sorted_split_order():
    splits = {
        "retain90": [{"question": "Q2?", "answer": "A2.", "perturbed_answer": ["P1.", "P2."],
                      "paraphrased_answer": "PA2.", "idk_answer": "No idea."}],
        "biographies": [{"person_id": 1, "name": "N", "text": "N was born."}],
    }
    assert corpus_texts(splits) == [
        "N was born.",
        "Question: Q2?\nAnswer: ", "A2.", "PA2.", "No idea.", "P1.", "P2.",
    ]
