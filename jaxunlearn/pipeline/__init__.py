"""The commands' orchestration: everything between parsed arguments and the libraries.

* ``provision``: the benchmark, the tokenizer, the model, provenance;
* ``training``: ``jaxunlearn train`` (target and retain models, cached by fingerprint),
  with ``quality`` (what a trained model knows);
* ``unlearning``: ``jaxunlearn unlearn``;
* ``evaluation``: the one writer of ``eval.json`` and the report, with the rules every
  command follows; ``evaluate``: ``jaxunlearn eval``;
* ``demo``: ``jaxunlearn demo``; ``experiment``: ``jaxunlearn run``;
* ``tools``: ``generate-data``, ``generate``, ``convert``.

Files and printing happen here (and in the training loop and the report), not below.
"""
