"""Integrations with other training frameworks (each an optional extra).

- :mod:`infoshape.integrations.transformers`: Hugging Face ``Trainer``
  (``pip install "infoshape[transformers]"``).

The PyTorch Lightning callback lives in :mod:`infoshape.apps.lightning`.
"""

__all__: list[str] = []
