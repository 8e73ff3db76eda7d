"""Unlearning methods: each a named composition of ``jaxunlearn.losses`` plus its hyper-parameters.

``get_method({"name": "npo", "beta": 0.2})`` turns the plain ``method`` section of a run
config into that method's typed, validated, frozen config.

Modules, each importing only those before it:

* ``registry``: ``MethodConfig``, ``register``, ``get_method``, ``method_names``, ``MethodError``;
* ``base``: ``GradientMethod`` (terms reduced exactly over micro-batches),
  ``ProcedureMethod``, ``UnlearnContext`` (with the gradient loop injected), ``CacheSpec``,
  the cached-reference helpers (``RefDist``, ``compress_logprobs``, ...);
* ``gradient``: GA, GradDiff, NPO, SimNPO, IdkDPO, RMU, UNDIAL, WGA, RKLD;
* ``curvature`` (loss and curvature products), ``secondorder_rounds`` (the shared
  procedure) and ``secondorder``: Newton, Fisher Removal, Fisher Forgetting;
* ``memorization``: SGA and TAU; ``relearn``: ReLearn.

The loop that runs a gradient method, ``methods.runner.unlearn_model``, imports these
modules; none of them imports it (a procedure receives it in its ``UnlearnContext``).
``ModelOutput`` and ``forward`` (``models.outputs``) are re-exported for method authors.
"""

from jaxunlearn.methods.registry import (MethodConfig, MethodError, get_method, method_names,
                                         register)
from jaxunlearn.methods.base import (AUTO_TOP_K, CacheSpec, GradientMethod, ProcedureMethod, RefDist,
                                     UnlearnContext, UnlearnResult, compress_logprobs,
                                     labels_on_support, model_on_support, ref_on_support,
                                     term_weights)
from jaxunlearn.methods.gradient import (IdkDPO, NPO, RKLD, RMU, UNDIAL, WGA, GradAscent,
                                         GradDiff, SimNPO)
from jaxunlearn.methods.secondorder import (FisherForgetting, FisherRemoval, Newton,
                                            SecondOrderMethod)
from jaxunlearn.methods.memorization import SGA, TAU
from jaxunlearn.methods.relearn import ReLearn, ReLearnObjective
from jaxunlearn.models.outputs import ModelOutput, forward

__all__ = [
    "MethodError", "MethodConfig", "register", "get_method", "method_names",
    "GradientMethod", "ProcedureMethod", "AUTO_TOP_K", "CacheSpec", "RefDist", "UnlearnContext",
    "UnlearnResult", "compress_logprobs", "model_on_support", "ref_on_support",
    "labels_on_support", "term_weights", "forward", "ModelOutput",
    "GradAscent", "GradDiff", "NPO", "SimNPO", "IdkDPO", "RMU", "UNDIAL", "WGA", "RKLD",
    "SecondOrderMethod", "Newton", "FisherRemoval", "FisherForgetting", "SGA", "TAU",
    "ReLearn", "ReLearnObjective",
]
