"""report.md tables, PNG figures, atomic writes, eval.json re-rendering, env info."""

import json
import math

import jax
import numpy as np
import pytest
from matplotlib import image as mpimg

from jaxunlearn import report
from jaxunlearn.errors import UserError
from jaxunlearn.report import figures, tables
from jaxunlearn.train.mesh import make_mesh


# The eval.json key (pinned layout) each summary column shows, written out here
# independently of the report's column accessors.
COLUMN_KEYS = {"FQ ↑": "forget_quality", "MU ↑": "model_utility",
               "forget ROUGE ↓": "forget_rouge", "forget prob ↓": "forget_prob",
               "forget TR ↑": "forget_truth_ratio", "retain ROUGE ↑": "retain_rouge",
               "retain prob ↑": "retain_prob", "MIA AUC (Min-K%)": "mia_min_k_auc",
               "PrivLeak →0": "privleak", "canary MA ↓": "canary_forget_ma", "KFR ↑": "kfr",
               "KRR ↑": "krr"}


def _model(seed: int, *, fq: float | None, attacks: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    m = {"forget_quality": fq, "model_utility": float(rng.uniform(0.2, 0.6)),
         "forget_rouge": float(rng.uniform()), "forget_prob": float(rng.uniform()),
         "forget_truth_ratio": float(rng.uniform()), "retain_rouge": float(rng.uniform()),
         "retain_prob": float(rng.uniform()), "mia_min_k_auc": float(rng.uniform()),
         "privleak": float(rng.normal(0, 20)), "canary_forget_ma": float(rng.uniform()),
         "kfr": 0.5, "krr": 0.75,
         "canaries": {split: {str(r): {"count": 2.0, "ma": float(rng.uniform())}
                              for r in reps}
                      for split, reps in (("forget", (1, 4, 16)), ("retain", (1, 4, 16)),
                                          ("heldout", (0,)))},
         "distributions": {f"{s}_{k}": rng.uniform(0.01, 2, 30).tolist()
                           for s in ("forget", "retain") for k in ("prob", "truth_ratio")},
         "samples": [{"question": "Who | is Ada?", "answer": "Ada is a pilot.",
                      "generation": "Ada\nis a baker."}]}
    if attacks:
        m["attacks"] = {"quantize_4bit": {"forget_rouge": {"before": 0.1, "after": 0.4},
                                          "forget_prob": {"before": 0.2, "after": 0.3}},
                        "relearn": {"forget_rouge": {"before": 0.1, "after": 0.55},
                                    "info": {"steps": 20}}}
    return m


@pytest.fixture
def evaluation():
    return {"config": {"data": {"benchmark": "runs/benchmark", "forget": "forget10"},
                       "seed": 0},
            "env": report.env_info(None),
            "models": {"npo": _model(2, fq=0.03), "retain": _model(1, fq=1.0, attacks=False),
                       "target": _model(0, fq=1e-12), "grad_ascent": _model(3, fq=0.0)}}


def _summary_rows(text: str) -> dict[str, list[str]]:
    section = text.split("## Summary")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]
    return {r.split(" | ")[0][2:]: r.strip("| ").split(" | ") for r in rows}


def test_report_has_a_row_per_model_and_valid_figures(tmp_path, evaluation):
    path = report.write_report(evaluation, tmp_path)
    text = path.read_text()
    rows = _summary_rows(text)
    assert list(rows) == ["target", "retain", "npo", "grad_ascent"]  # target, retain first
    header = [c.header for c in report.SUMMARY_COLUMNS]
    assert header == list(COLUMN_KEYS)
    npo = evaluation["models"]["npo"]
    for column, cell in zip(report.SUMMARY_COLUMNS, rows["npo"][1:]):
        assert cell == tables._fmt(npo[COLUMN_KEYS[column.header]], column.kind), column.header
    assert rows["npo"][1] == "3.00e-02" and len(rows["npo"]) == len(header) + 2
    assert rows["npo"][-1] == "4-bit 0.100→0.400; relearn 0.100→0.550"
    assert rows["retain"][-1] == "–"
    assert "| npo | 4-bit | forget_rouge: 0.100→0.400; forget_prob: 0.200→0.300 |" in text
    assert "Who \\| is Ada?" in text and "Ada is a baker." in text  # cells stay one line
    for name in report.FIGURES:
        assert f"]({name})" in text
        img = mpimg.imread(tmp_path / name)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        assert img.std() > 0  # something was drawn
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["report.md", *report.FIGURES])


def test_partial_results_render_with_dashes(tmp_path):
    data = {"models": {"target": {"forget_quality": None, "model_utility": 0.4},
                       "x": {"model_utility": float("nan")}}}
    text = report.write_report(data, tmp_path).read_text()
    rows = _summary_rows(text)
    assert rows["target"][1] == "–" and rows["target"][2] == "0.400"
    assert rows["x"][2] == "–"
    assert "canaries.png" not in text and not (tmp_path / "canaries.png").exists()
    assert (tmp_path / "methods.png").exists()


def test_write_json_is_strict_and_atomic(tmp_path):
    path = tmp_path / "eval.json"
    report.write_json({"a": float("nan"), "b": np.float32(0.5), "c": np.arange(3),
                       "d": {"e": math.inf}}, path)
    data = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(c))
    assert data == {"a": None, "b": 0.5, "c": [0, 1, 2], "d": {"e": None}}

    def failing(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        report._atomic(path, failing)
    assert json.loads(path.read_text())["b"] == 0.5  # the old file survives
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]  # no temp file left


def test_main_report_rerenders_and_rejects_bad_files(tmp_path, evaluation, capsys):
    path = report.write_json(evaluation, tmp_path / "eval.json")
    assert report.main_report(path) == 0
    assert "report.md" in capsys.readouterr().out
    assert _summary_rows((tmp_path / "report.md").read_text()).keys() == {
        "target", "retain", "npo", "grad_ascent"}
    with pytest.raises(UserError, match="no such file"):
        report.main_report(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match=f"{bad}: malformed JSON"):
        report.main_report(bad)
    bad.write_text(json.dumps({"models": {"npo": 3}}))
    with pytest.raises(UserError, match="models.npo"):
        report.main_report(bad)
    bad.write_text(json.dumps({"config": {}}))
    with pytest.raises(UserError, match="field 'models'"):
        report.main_report(bad)


def test_env_info_records_versions_devices_and_mesh():
    env = report.env_info(make_mesh(2, 4))
    assert env["versions"]["jax"] == jax.__version__
    assert env["versions"]["numpy"] == np.__version__
    assert {"flax", "optax", "transformers", "jaxunlearn", "python"} <= set(env["versions"])
    assert env["devices"]["count"] == len(jax.devices())
    assert env["devices"]["platform"] == jax.devices()[0].platform
    assert env["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}
    assert report.env_info(None)["mesh"] is None


def test_mistyped_numbers_name_the_model_and_field(tmp_path, evaluation):
    evaluation["models"]["npo"]["forget_quality"] = "high"
    with pytest.raises(UserError, match=r"models\.npo'?: field 'forget_quality': expected a "
                                        "number"):
        report.write_report(evaluation, tmp_path)
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def test_spread_labels_keep_order_gap_and_bounds():
    rng = np.random.default_rng(0)
    ys = np.concatenate([rng.uniform(0, 1, 6), np.full(5, 0.95), np.full(4, 0.02), [-0.3, 1.4]])
    gap = 1.0 / (len(ys) - 1)
    out = np.asarray(report.spread_labels(ys.tolist(), gap))
    order = np.argsort(ys, kind="stable")
    assert np.all(np.diff(out[order]) >= gap - 1e-12)  # same order, never closer than gap
    assert out.min() >= -1e-12 and out.max() <= 1 + 1e-12
    alone = report.spread_labels([0.3, 0.7], 0.1)  # uncrowded labels stay at their points
    assert alone == pytest.approx([0.3, 0.7])


def _figures(monkeypatch, evaluation, tmp_path) -> dict:
    saved = {}
    real = figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, path, tight=True: (
        saved.__setitem__(path.name, fig), real(fig, path, tight)))
    report.write_outputs(evaluation, tmp_path)
    return saved


def test_canary_figure_is_one_panel_per_model_with_one_legend(tmp_path, evaluation, monkeypatch):
    fig = _figures(monkeypatch, evaluation, tmp_path)["canaries.png"]
    assert [ax.get_title() for ax in fig.axes] == list(tables.ordered(
        report.read_models(evaluation, "test")))
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1
    # The target's forget curve is drawn in grey behind every other model's panel.
    grey = [ax for ax in fig.axes if any(line.get_color() == "0.75" for line in ax.lines)]
    assert len(grey) == len(fig.axes) - 1


def test_fq_mu_labels_never_overlap(tmp_path, evaluation, monkeypatch):
    base = evaluation["models"]["npo"]
    for i in range(8):  # eight methods at nearly the same point
        evaluation["models"][f"npo_{i}"] = {**base, "forget_quality": 0.03 * (1 + 0.01 * i),
                                            "model_utility": base["model_utility"] + 0.001 * i}
    fig = _figures(monkeypatch, evaluation, tmp_path)["fq_vs_mu.png"]
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    from matplotlib.text import Text  # the text alone (an annotation's box includes its line)

    boxes = [Text.get_window_extent(t, renderer) for t in ax.texts]
    assert len(boxes) == 12
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), "two labels overlap"
