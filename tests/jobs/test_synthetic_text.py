"""Synthetic packs' `recall` text: the labelled tokens are exactly the repeat of the document's
first half, so predicting them needs attention half a document back."""
from __future__ import annotations

from itertools import pairwise

import numpy as np

from jobs.steps.train_data import SyntheticPacks, SyntheticSpec


def test_recall_labels_are_the_repeat_of_the_first_half():
    spec = SyntheticSpec(packs=2, seq_len=1024, vocab=300, vision_token_id=7, text="recall", grid=(4, 4))
    batch = SyntheticPacks(spec)[1]
    ids, labels = batch.input_ids.numpy(), batch.labels.numpy()
    cu = batch.cu_seqlens.tolist()
    for a, b in pairwise(cu):
        doc_ids, doc_labels = ids[a:b], labels[a:b]
        text = doc_ids[doc_ids != spec.vision_token_id]
        where = np.flatnonzero(doc_labels != -100)
        half = len(where)
        assert half > 30 and np.array_equal(text[half:2 * half], text[:half])
        # the targets are the next tokens, and they are the first half again, in order
        assert np.array_equal(doc_labels[where], doc_ids[where + 1])
        assert np.array_equal(doc_labels[where], text[:half])
