"""The method registry (``jaxunlearn.methods.registry``): DESIGN.md's names, typed and
frozen configs, and every bad hyper-parameter named as ``method.<field>``."""

import dataclasses

import pytest

from jaxunlearn import methods
from jaxunlearn.errors import UserError
from jaxunlearn.models import LlamaConfig

DESIGN_GRADIENT = ("grad_ascent", "grad_diff", "npo", "simnpo", "idk_dpo", "rmu", "undial",
                   "wga", "rkld")
DESIGN_ALL = DESIGN_GRADIENT + ("newton", "fisher_removal", "fisher_forgetting", "sga", "tau",
                                "relearn")
CFG = LlamaConfig(vocab_size=23, hidden_size=16, intermediate_size=32, num_layers=1,
                  num_heads=2, num_kv_heads=1, tie_word_embeddings=True)


def test_registry_names_are_design_names():
    names = methods.method_names()
    assert set(DESIGN_GRADIENT) <= set(names)
    assert set(names) <= set(DESIGN_ALL), "every registered name must be a DESIGN.md name"
    for name in DESIGN_GRADIENT:
        cfg = methods.get_method(name)
        assert cfg.name == name and cfg.kind == "gradient"
        assert isinstance(cfg, methods.GradientMethod) and cfg.reference
        assert cfg.to_dict()["name"] == name


def test_defaults_follow_open_unlearning_and_papers():
    g = methods.get_method
    assert (g("npo").beta, g("npo").alpha, g("npo").gamma) == (0.1, 1.0, 1.0)
    s = g("simnpo")
    assert (s.beta, s.delta, s.gamma, s.alpha) == (4.5, 0.0, 0.125, 1.0)
    assert (g("idk_dpo").beta, g("idk_dpo").retain_loss) == (0.1, "nll")
    assert (g("undial").beta, g("undial").alpha) == (10.0, 0.0)
    assert g("wga").beta == 1.0 and g("grad_ascent").alpha == 0.0 and g("grad_diff").alpha == 1.0
    r = g("rmu")
    assert (r.steering_coeff, r.retain_loss, r.hidden_layer(CFG)) == (2.0, "activation", 0)
    assert r.hidden_layer(dataclasses.replace(CFG, num_layers=4)) == 1
    assert r.hidden_layer(dataclasses.replace(CFG, num_layers=16)) == 7  # open-unlearning's
    assert g("npo").cache_spec(CFG).ref_logp_views == ("answer",)
    assert g("simnpo").cache_spec(CFG).ref_logp_views == ()  # reference-free
    assert g("rkld").cache_spec(CFG).forget_dist == "rkld_teacher"


def test_yaml_values_are_coerced_and_frozen():
    m = methods.get_method({"name": "npo", "beta": 1, "alpha": 0})
    assert isinstance(m.beta, float) and m.beta == 1.0 and m.alpha == 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.beta = 2.0
    assert methods.get_method(m) is m


@pytest.mark.parametrize("spec, needle", [
    ({"name": "npo", "beta": -0.1}, "method.beta"),
    ({"name": "npo", "beta": 0.0}, "method.beta"),
    ({"name": "grad_diff", "alpha": -1}, "method.alpha"),
    ({"name": "simnpo", "gamma": -2.0}, "method.gamma"),
    ({"name": "simnpo", "delta": -0.5}, "method.delta"),
    ({"name": "undial", "beta": -1}, "method.beta"),
    ({"name": "wga", "beta": "high"}, "method.beta"),
    ({"name": "npo", "beta": True}, "method.beta"),
    ({"name": "npo", "beta": float("nan")}, "method.beta"),
    ({"name": "npo", "betta": 0.1}, "method.betta"),
    ({"name": "npo", "retain_loss": "mse"}, "method.retain_loss"),
    ({"name": "npo", "weighting": "loudest"}, "method.weighting"),
    ({"name": "rmu", "steering_coeff": 0}, "method.steering_coeff"),
    ({"name": "rmu", "layer": -1}, "method.layer"),
    ({"name": "rkld", "teacher_alpha": -1}, "method.teacher_alpha"),
    ({"name": "rkld", "strengthen_epochs": 0}, "method.strengthen_epochs"),
    ({"name": "rkld", "ref_top_k": -3}, "method.ref_top_k"),
    ({"beta": 0.1}, "method.name"),
])
def test_bad_hyper_parameters_are_named(spec, needle):
    with pytest.raises(methods.MethodError, match=needle.replace(".", r"\.")):
        methods.get_method(spec)


def test_unknown_method_lists_known_names_and_is_a_user_error():
    with pytest.raises(methods.MethodError) as e:
        methods.get_method({"name": "forgetall"})
    assert isinstance(e.value, UserError) and isinstance(e.value, ValueError)
    for name in DESIGN_GRADIENT:
        assert name in str(e.value)


def test_rmu_layer_checked_against_the_model():
    with pytest.raises(methods.MethodError, match=r"method\.layer"):
        methods.get_method({"name": "rmu", "layer": 1}).check_model(CFG)



def test_register_refuses_nameless_and_duplicate_methods():
    with pytest.raises(TypeError, match="needs a name"):
        methods.register(methods.GradientMethod)
    with pytest.raises(TypeError, match="already registered"):
        @methods.register
        @dataclasses.dataclass(frozen=True, kw_only=True)
        class OtherNPO(methods.NPO):
            pass
