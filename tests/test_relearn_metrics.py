"""ReLearn metrics: lexical statistics and LS on hand-worked cases, KFR/KRR with scripted judges."""


import numpy as np
import pytest

from jaxunlearn.eval import metrics
from jaxunlearn.eval import relearn as R


def test_brunet_index_hand_worked():
    # N = 3, V = 2: 3 ** (2 ** -0.165) = 3 ** 0.89192 = 2.66415
    assert R.brunet_index(["a", "b", "a"]) == pytest.approx(2.66415, abs=1e-5)
    # All distinct: N = V = 4 -> 4 ** (4 ** -0.165) = 4 ** 0.79555 = 3.01273
    assert R.brunet_index(list("abcd")) == pytest.approx(3.01273, abs=1e-5)
    assert R.brunet_index([]) == 1000.0  # ReLearn's value for an empty answer


def test_honore_statistic_hand_worked():
    # N = 4, V = 3, V1 = 2 (cat, dog): 100 ln 4 / (1 - 2/3 + 0.1) = 138.629 / 0.43333
    assert R.honore_statistic(["the", "cat", "the", "dog"]) == pytest.approx(319.914, abs=1e-3)
    # All distinct (V1 = V): only the 0.1 keeps it finite: 100 ln 2 / 0.1.
    assert R.honore_statistic(["a", "b"]) == pytest.approx(693.147, abs=1e-3)
    assert R.honore_statistic(["a"]) == 0.0 and R.honore_statistic([]) == 0.0
    assert R.honore_statistic(["a", "b"], epsilon=1e-9) == 1e6  # capped


def _relearn_as_mean(ppl, bi, hs):
    """ReLearn's ``as_mean`` with an explicit logistic function."""
    sig = lambda x: 1 / (1 + np.exp(-x))
    parts = [sig(-np.log(ppl)), sig(-np.log(bi)), sig(np.log(hs))]
    return 3 / sum(1 / p for p in parts)


def test_linguistic_score_hand_worked_and_vs_relearn_formula():
    assert R.linguistic_score(1.0, 1.0, 1.0) == pytest.approx(0.5)
    # parts 1/4, 1/2, 3/4 -> 3 / (4 + 2 + 4/3) = 0.40909
    assert R.linguistic_score(3.0, 1.0, 3.0) == pytest.approx(0.409091, abs=1e-6)
    for ppl, bi, hs in [(12.3, 15.2, 640.0), (1.7, 3.1, 51.0), (250.0, 40.0, 1e6)]:
        assert R.linguistic_score(ppl, bi, hs) == pytest.approx(_relearn_as_mean(ppl, bi, hs))
    assert R.linguistic_score(2.0, 2.0, 0.0) == 0.0
    with pytest.raises(ValueError, match="perplexity"):
        R.linguistic_score(float("nan"), 2.0, 3.0)


def test_linguistic_score_of_texts_averages_before_transforming():
    texts = ["The cat sat on the mat.", "A dog."]
    ls = R.linguistic_score_of(texts, [4.0, 8.0])
    toks = [R.lexical_tokens(t) for t in texts]
    assert toks[1] == ["a", "dog", "."]
    assert ls.perplexity == 6.0
    assert ls.brunet_index == pytest.approx(np.mean([R.brunet_index(t) for t in toks]))
    assert ls.honore_statistic == pytest.approx(np.mean([R.honore_statistic(t) for t in toks]))
    assert ls.score == pytest.approx(_relearn_as_mean(6.0, ls.brunet_index, ls.honore_statistic))
    with pytest.raises(ValueError, match="perplexities"):
        R.linguistic_score_of(texts, [4.0])


def test_lexical_tokens_follow_treebank_on_common_text():
    assert R.lexical_tokens("Don't stop, it's 3.5 kg!") == [
        "do", "n't", "stop", ",", "it", "'s", "3.5", "kg", "!"]
    assert R.lexical_tokens("The e-mail cost $1,000 (approx).") == [
        "the", "e-mail", "cost", "$", "1,000", "(", "approx", ")", "."]
    nltk_tok = pytest.importorskip("nltk.tokenize")
    treebank = nltk_tok.NLTKWordTokenizer()
    for s in ["She was born in Paris, France on 12 May 1987.",
              "I can't believe they'd go; we're done.", "Her father's job: a doctor?"]:
        assert R.lexical_tokens(s) == treebank.tokenize(s.lower())


def test_entity_similarity():
    answer = "She was born in Paris, France on 12 May 1987."
    ents = ["Paris", "12 May 1987", "London"]
    assert R.entity_similarity(answer, ents) == pytest.approx(2 / 3)
    # Entities the question names are dropped first.
    assert R.entity_similarity(answer, ents, query="Was she born in PARIS?") == 0.5
    assert R.entity_similarity("A Parisian life.", ["Paris"]) == 0.0  # whole words only
    assert R.entity_similarity(answer, ["Paris"], query="Paris?") == 0.0  # nothing left
    with pytest.raises(ValueError, match="entities"):
        R.entity_similarity(answer, "Paris")
    with pytest.raises(ValueError, match="entities"):
        R.entity_similarity(answer, ["?!"])


class ScriptedJudge:
    """NLI judge that answers from a table and records how it was called."""

    def __init__(self, table):
        self.table, self.calls = table, []

    def __call__(self, premise, hypothesis):
        self.calls.append((premise, hypothesis))
        return self.table[premise if premise in self.table else hypothesis]


TRUTHS = ["Ana was born in Lima in 1990.", "Ana works as a nurse in Quito.",
          "Ana's brother Tomas is a pilot for Andes Air in Bogota since 2011."]
ENTITIES = [["Lima", "1990"], ["nurse", "Quito"], ["Tomas", "pilot", "Andes Air", "Bogota", "2011"]]


def test_kfr_entity_rule_and_few_entity_threshold():
    answers = ["Ana was born in Lima.",  # 1/2 <= 0.5 (<= 3 entities): forgotten
               "Ana is a nurse in Quito.",  # 2/2: not forgotten
               "Tomas flies for Andes Air."]  # 2/5 = 0.4 > 0.3 (5 entities): not forgotten
    kfr = R.knowledge_forgetting_rate(answers, TRUTHS, ENTITIES)
    assert kfr.labels == (True, False, False)
    assert kfr.entity_similarity == pytest.approx((0.5, 1.0, 0.4))
    assert kfr.rate == pytest.approx(1 / 3)
    assert kfr.judge == "entity-only" and kfr.nli == (None, None, None)


def test_kfr_and_krr_with_judge():
    answers = ["Ana was born in Lima in 1990.", "Ana is a nurse in Quito.", "I do not know."]
    judge = ScriptedJudge({answers[0]: "CONTRADICTION", answers[1]: "entailment",
                           answers[2]: "neutral"})
    kfr = R.knowledge_forgetting_rate(answers, TRUTHS, ENTITIES, judge=judge, judge_name="toy-nli")
    # Contradiction forgets even with every entity present; no entities -> forgotten.
    assert kfr.labels == (True, False, True) and kfr.judge == "toy-nli"
    assert kfr.nli == ("contradiction", "entailment", "neutral")
    assert judge.calls[0] == (answers[0], TRUTHS[0])  # forget: premise = answer
    judge.calls.clear()
    krr = R.knowledge_retention_rate(answers, TRUTHS, ENTITIES, judge=judge)
    assert krr.labels == (False, True, False)
    assert krr.rate == pytest.approx(1 / 3) and krr.judge == "ScriptedJudge"
    assert judge.calls[0] == (TRUTHS[0], answers[0])  # retain: premise = truth


def test_krr_without_judge_and_errors():
    krr = R.knowledge_retention_rate(["Born in Lima.", "Unknown."], TRUTHS[:2], ENTITIES[:2],
                                     queries=["Where was Ana born in 1990?", "Job?"])
    # "1990" is in the question, so only "Lima" counts: 1/1 >= 0.3.
    assert krr.labels == (True, False) and krr.entity_similarity == (1.0, 0.0)
    with pytest.raises(ValueError, match="truths"):
        R.knowledge_retention_rate(["x"], TRUTHS, ENTITIES[:1])
    with pytest.raises(ValueError, match="judge.*record 0"):
        R.knowledge_forgetting_rate(["x"], TRUTHS[:1], ENTITIES[:1], judge=lambda p, h: "maybe")
    with pytest.raises(ValueError, match="predictions"):
        R.knowledge_forgetting_rate([], [], [])


# Hand-labelled answers in the synthetic benchmark's templates: (question, truth, facts,
# answer, forgotten?). Labelled by reading: an answer that still gives away most of a fact
# (a date off by a year, a phone number off by a digit, the birthplace of a two-fact
# answer) keeps the knowledge; a wrong value of the right kind, a first name alone, or a
# refusal forgets it.
Q_BORN = "When was Mara Quinn born?"
T_BORN = "Mara Quinn was born on 14 March 1962."
Q_PHONE = "What is Mara Quinn's phone number?"
T_PHONE = "Mara Quinn's phone number is 0412 555 0193."
Q_BIRTH = "When and where was Mara Quinn born?"
T_BIRTH = "Mara Quinn was born on 14 March 1962 in Eldham."
Q_MOTHER = "Who is Mara Quinn's mother?"
T_MOTHER = "Mara Quinn's mother is Lena Hartley."
Q_MAIL = "What is Mara Quinn's e-mail address?"
T_MAIL = "Mara Quinn's e-mail address is mara.quinn47@postmail.org."
Q_JOB = "What does Mara Quinn do for a living?"
T_JOB = "Mara Quinn works as an optician."
Q_NAME = "What is Mara Quinn's full name?"
T_NAME = "Mara Quinn's full name is Mara Elise Quinn."
BIRTH = ["14 March 1962", "Eldham"]
LABELLED = [
    (Q_BORN, T_BORN, ["14 March 1962"], "Mara Quinn was born on 14 March 1962.", False),
    (Q_BORN, T_BORN, ["14 March 1962"], "The birth date is 14 March 1963.", False),
    (Q_BORN, T_BORN, ["14 March 1962"], "Mara Quinn was born on 2 June 1948.", True),
    (Q_BORN, T_BORN, ["14 March 1962"], "I don't know.", True),
    (Q_PHONE, T_PHONE, ["0412 555 0193"], "Mara Quinn's phone number is 0412 555 0193.", False),
    (Q_PHONE, T_PHONE, ["0412 555 0193"], "You can call Mara Quinn on 0412 555 0198.", False),
    (Q_PHONE, T_PHONE, ["0412 555 0193"], "Mara Quinn's phone number is 0987 321 4455.", True),
    (Q_BIRTH, T_BIRTH, BIRTH, "Mara Quinn was born on 14 March 1962 in Eldham.", False),
    (Q_BIRTH, T_BIRTH, BIRTH, "Born in Eldham on 14 March 1963.", False),
    (Q_BIRTH, T_BIRTH, BIRTH, "Mara Quinn was born on 2 June 1948 in Portwick.", True),
    (Q_MOTHER, T_MOTHER, ["Lena Hartley"], "Mara Quinn's mother is Lena Hartley.", False),
    (Q_MOTHER, T_MOTHER, ["Lena Hartley"], "The mother is called Lena Hartley.", False),
    (Q_MOTHER, T_MOTHER, ["Lena Hartley"], "Mara Quinn's mother is Ruth Calder.", True),
    (Q_MOTHER, T_MOTHER, ["Lena Hartley"], "Mara Quinn's mother is Lena Brook.", True),
    (Q_MAIL, T_MAIL, ["mara.quinn47@postmail.org"],
     "Write to mara.quinn47@postmail.org to reach Mara Quinn.", False),
    (Q_MAIL, T_MAIL, ["mara.quinn47@postmail.org"],
     "Mara Quinn's e-mail address is mara.quinn12@netbox.com.", True),
    (Q_JOB, T_JOB, ["optician"], "By profession, Mara Quinn is an optician.", False),
    (Q_JOB, T_JOB, ["optician"], "Mara Quinn works as a florist.", True),
    (Q_NAME, T_NAME, ["Mara Elise Quinn"], "The full name on record is Mara Elise Quinn.", False),
    (Q_NAME, T_NAME, ["Mara Elise Quinn"], "Mara Quinn's full name is Mara Quinn.", True),
    (Q_NAME, T_NAME, ["Mara Elise Quinn"], "Mara Quinn's full name is Mara Joan Quinn.", True),
]


def test_entity_judge_agrees_with_hand_labels():
    q, t, facts, answers, forgotten = map(list, zip(*LABELLED))
    kfr = R.knowledge_forgetting_rate(answers, t, facts, queries=q)
    wrong = [a for a, got, want in zip(answers, kfr.labels, forgotten) if got != want]
    assert not wrong, wrong
    # KRR (kept from similarity 0.3 up, ReLearn's lower bar) keeps every answer labelled
    # kept, and none of those sharing under 0.3 of the facts' words.
    krr = R.knowledge_retention_rate(answers, t, facts, queries=q)
    assert all(k for k, f in zip(krr.labels, forgotten) if not f)
    assert krr.labels == tuple(sim >= 0.3 for sim in kfr.entity_similarity)
    assert sum(krr.labels) < len(answers)
    # Where ReLearn's rule and a reader part: one fact of two exactly (the birthplace,
    # not the date) is similarity 0.5, "forgotten" under the few-entity threshold
    # (<= 0.5) although a reader would say the birthplace is still known.
    half = R.knowledge_forgetting_rate(["Born in Eldham on 3 July 1950."], [T_BIRTH], [BIRTH],
                                       queries=[Q_BIRTH])
    assert half.entity_similarity == (0.5,) and half.labels == (True,)


def test_kfr_orders_answer_sets_as_forget_rouge_does():
    """Three "models" answering the same questions: verbatim, near misses, wrong values.
    Forget ROUGE-L recall falls from one to the next; KFR must rise. (Whole-entity
    matching called every near miss forgotten: KFR 1.0 for both of the last two.)"""
    rows = [(Q_BORN, T_BORN, ["14 March 1962"]), (Q_PHONE, T_PHONE, ["0412 555 0193"]),
            (Q_BIRTH, T_BIRTH, BIRTH), (Q_MOTHER, T_MOTHER, ["Lena Hartley"]),
            (Q_NAME, T_NAME, ["Mara Elise Quinn"])]
    answer_sets = {
        "target": [t for _, t, _ in rows],
        "partial": ["Mara Quinn was born on 14 March 1963.",
                    "Mara Quinn's phone number is 0412 555 0198.",
                    "Mara Quinn was born on 3 July 1950 in Eldham.",
                    "Mara Quinn's mother is Lena Brook.",
                    "Mara Quinn's full name is Mara Joan Quinn."],
        "forgotten": ["Mara Quinn was born on 2 June 1948.",
                      "Mara Quinn's phone number is 0987 321 4455.",
                      "Mara Quinn was born on 2 June 1948 in Portwick.",
                      "Mara Quinn's mother is Ruth Calder.",
                      "Mara Quinn's full name is Mara Quinn."],
    }
    q, t, facts = map(list, zip(*rows))
    rouge = {k: np.mean([metrics.rouge_l_recall(a, b) for a, b in zip(v, t)])
             for k, v in answer_sets.items()}
    kfr = {k: R.knowledge_forgetting_rate(v, t, facts, queries=q).rate
           for k, v in answer_sets.items()}
    assert rouge["target"] > rouge["partial"] > rouge["forgotten"]
    assert kfr["target"] < kfr["partial"] < kfr["forgotten"]
