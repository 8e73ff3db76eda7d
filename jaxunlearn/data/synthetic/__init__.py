"""The default benchmark: fictitious people, their private facts, world facts and canaries.

TOFU (Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning for LLMs") cannot be
downloaded here, so jaxunlearn ships its own: invented people whose private facts
(birth, address, phone, e-mail, employer, relatives, national ID, health, money) a
model is trained on and must later forget; invented but non-private world facts that
it must keep (model utility); and canaries (Carlini et al. 2019, "The Secret Sharer")
repeated 1..64 times in training, for exposure and memorisation curves.

One idea per module:

* ``vocabulary``: name and fact pools, templates, secret formats, how values are drawn;
* ``generator``: :class:`SyntheticConfig` and :func:`generate` (pure, one seed);
* ``benchmark``: the :class:`Benchmark` record and its byte encoding;
* ``files``: :func:`write_benchmark` / :func:`read_benchmark` (atomic, hash-checked);
* ``curriculum``: what the target and retain models train on (:func:`training_documents`).

Files (JSON lines, keys sorted, UTF-8) follow :mod:`jaxunlearn.data.schema`:
``forget01/05/10``, ``retain99/95/90``, ``holdout``, ``world_facts``, ``biographies``,
``canaries`` (all ``.json``) and ``manifest.json``.
"""

from jaxunlearn.data.schema import MANIFEST, QA_SPLITS
from jaxunlearn.data.synthetic.benchmark import FILES, GENERATOR, Benchmark
from jaxunlearn.data.synthetic.curriculum import TrainItem, canary_copies, training_documents
from jaxunlearn.data.synthetic.files import read_benchmark, write_benchmark
from jaxunlearn.data.synthetic.generator import SyntheticConfig, generate
from jaxunlearn.data.synthetic.vocabulary import CANARY_FORMATS, sample_secret, secret_space_size
from jaxunlearn.errors import BenchmarkError

__all__ = [
    "BenchmarkError", "SyntheticConfig", "Benchmark", "TrainItem", "generate", "write_benchmark",
    "read_benchmark", "training_documents", "canary_copies", "CANARY_FORMATS", "sample_secret",
    "secret_space_size", "QA_SPLITS", "FILES", "GENERATOR", "MANIFEST",
]
