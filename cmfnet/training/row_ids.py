"""The ids of table rows: a card (``pce``), a variant (``table6.mfl``) or a head of a variant
(``table5.ct3_mr4@ct``). Heads of one variant are rows predicted by one trained model.

Kept free of torch (unlike :mod:`cmfnet.training.cards`) so that ``cmfnet tables`` and
``cmfnet curves``, which never train, read ids by the same rule as the pipeline.
"""

from __future__ import annotations


def split_row_id(row_id: str) -> tuple[str, str]:
    """``table5.ct3_mr4@ct`` -> ("table5.ct3_mr4", "ct"); a row without a head -> (its id, "")."""
    model, _, head = row_id.partition("@")
    return model, head


def training_id(row_id: str) -> str:
    """The trained model a row reads: heads of one variant share it."""
    return split_row_id(row_id)[0]
