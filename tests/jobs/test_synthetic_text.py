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


def test_a_placeholder_at_the_top_of_the_vocabulary_leaves_the_ids_below_it():
    """An imported model may put its vision placeholder at its last id: the text then takes the ids
    below it, every one a valid embedding row, none the placeholder."""
    for text in ("recall", "progression"):
        spec = SyntheticSpec(packs=2, seq_len=512, vocab=300, vision_token_id=299, text=text, grid=(4, 4))
        batch = SyntheticPacks(spec)[0]
        ids = batch.input_ids.numpy()
        text_ids = ids[ids != spec.vision_token_id]
        assert text_ids.min() >= 0 and text_ids.max() < spec.vision_token_id
        assert (ids == spec.vision_token_id).sum() > 0 and len(np.unique(text_ids)) > 20
        labels = batch.labels.numpy()
        assert labels[labels != -100].max() < spec.vision_token_id


def test_ids_above_the_placeholder_are_kept_where_there_are_some():
    spec = SyntheticSpec(packs=1, seq_len=512, vocab=300, vision_token_id=7, text="recall", grid=(4, 4))
    ids = SyntheticPacks(spec)[0].input_ids.numpy()
    assert ids[ids != 7].min() > 7
