"""Scoring a model's answer to a needle by one teacher-forced forward.

The model has no KV cache, so the answer is not generated token by token: the forward runs on
the whole document, answer included, and at each answer position the argmax of the logits is
the greedy choice given the right answer so far. Exact match (every argmax equals the answer's
token) is then what greedy decoding would produce: as long as every choice is right, greedy
decoding feeds exactly these tokens back. The answer's log-likelihood comes from the same logits.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AnswerScore:
    exact: bool  # the greedy answer is the needle's code
    loglik: float  # sum over the answer's tokens of log p(token | everything before it)
    tokens_right: int  # answer tokens whose argmax is right
    tokens: int


@torch.no_grad()
def score_answer(model, batch, answer_at: int, answer_len: int) -> AnswerScore:
    """``batch`` on the model's device; the answer is tokens answer_at .. answer_at+answer_len-1."""
    rows = torch.arange(answer_at - 1, answer_at - 1 + answer_len, device=batch.input_ids.device)
    logp = torch.log_softmax(model.logits_at(batch, rows).float(), dim=-1)
    target = batch.input_ids[rows + 1]
    right = logp.argmax(-1) == target
    return AnswerScore(exact=bool(right.all()), loglik=float(logp.gather(1, target[:, None]).sum()),
                       tokens_right=int(right.sum()), tokens=answer_len)
