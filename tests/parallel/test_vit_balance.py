"""ViT work balancing on a skewed pack, and the context split's bookkeeping (no processes needed:
every rank computes the same plan from the pack alone)."""
import random

import pytest
import torch

from model.presets import preset
from parallel.cp_split import chunk_borders, local_pack, rank_rows
from parallel.vision_exchange import plan_vision
from tests.model.vlm_batches import make_batch

CFG = preset("tiny")
# One long video of large frames, small clips and text: the rank owning the long video's tokens
# gets most of the ViT work if videos stay with their owners.
SKEWED = ((20, (12, 6, 6)), (10, (2, 2, 2)), (30, None), (10, (1, 3, 3)), (16, (3, 2, 2)))


@pytest.mark.parametrize("cp", [2, 4])
def test_balanced_vit_within_ten_percent_where_owner_split_is_not(cp):
    batch = make_batch(CFG.lm.vocab, CFG.vision_token_id, seed=random.randrange(1000), docs=SKEWED)
    lp = local_pack(batch, cp, 0, align=CFG.lm.dsa.block_q)
    balanced = plan_vision(batch, lp, CFG.vision_token_id, CFG.vision, "balanced")
    owner = plan_vision(batch, lp, CFG.vision_token_id, CFG.vision, "owner")
    print(f"cp={cp}: ViT cost max/mean balanced {balanced.imbalance():.3f}, "
          f"videos on their token owner {owner.imbalance():.3f}")
    assert balanced.imbalance() <= 1.1
    assert owner.imbalance() > 1.3
    # every vision token is computed exactly once
    done = torch.cat([balanced.tokens_run_by(r) for r in range(cp)]).sort().values
    assert torch.equal(done, torch.arange(balanced.token_pos.numel()))


@pytest.mark.parametrize("cp,align", [(2, 1), (2, 8), (4, 8), (3, 4)])
def test_context_split_covers_each_position_once_on_block_borders(cp, align):
    rng = random.Random()
    lengths = [rng.randint(1, 200) for _ in range(rng.randint(1, 5))]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    rows = rank_rows(cu, cp, align)
    assert torch.equal(torch.cat(rows).sort().values, torch.arange(sum(lengths)))
    for r in rows:
        assert torch.equal(r, r.sort().values)
    for n in lengths:
        b = chunk_borders(n, cp, align)
        assert b[0] == 0 and b[-1] == n and b == sorted(b)
        assert all(x % align == 0 or x == n for x in b[:-1])  # a block border or the doc's end


def test_local_pack_keeps_positions_labels_and_segments():
    batch = make_batch(CFG.lm.vocab, CFG.vision_token_id, seed=1, docs=SKEWED)
    lp = local_pack(batch, 2, 1, align=8)
    pos = lp.q_pos.long()
    assert torch.equal(lp.input_ids, batch.input_ids[pos])
    assert torch.equal(lp.labels, batch.labels[pos])
    assert torch.equal(lp.position_ids, batch.position_ids[:, pos])
    cu = lp.cu_seqlens.long()
    for a, b in zip(cu[:-1], cu[1:]):  # each local segment: consecutive positions of one document
        assert torch.equal(pos[a:b], torch.arange(int(pos[a]), int(pos[a]) + int(b - a)))
        assert len(set(lp.q_doc[a:b].tolist())) == 1
