"""ReLearn metrics: lexical statistics and LS on hand-worked cases, KFR/KRR with scripted judges."""


import numpy as np
import pytest

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
