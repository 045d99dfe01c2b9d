"""Chat formats as data: a tokenizer built the Qwen way (ChatML and vision markers), tokenized
turns against transformers' rendering of a ChatML template, and the loss mask."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from pipeline.chat_formats import QWEN, ChatFormatError, chat_format
from pipeline.errors import TextError
from pipeline.text import load_tokenizer, tokenize_turns, train_tokenizer

# ChatML as Qwen's chat templates spell it (one turn: <|im_start|>role\ncontent<|im_end|>\n).
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}")
TURNS = [{"role": "system", "content": "You describe videos."},
         {"role": "user", "content": "Watch <video> then say what happens."},
         {"role": "assistant", "content": "Two people ride bicycles."},
         {"role": "user", "content": "And then?"},
         {"role": "assistant", "content": "They turn left at the corner."}]


@pytest.fixture(scope="module")
def qwen_tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen") / "tokenizer.json"
    texts = [t["content"] for t in TURNS] * 10 + ["system user assistant"] * 10
    train_tokenizer(texts, path, vocab_size=400, fmt=QWEN)
    return path


def test_qwen_format_spells_chatml_as_transformers_renders_it(qwen_tokenizer):
    transformers = pytest.importorskip("transformers")
    tok = load_tokenizer(qwen_tokenizer, QWEN)
    text = tokenize_turns(tok, TURNS, fmt=QWEN)
    video = "<|vision_start|><|vision_end|>"
    messages = [{**t, "content": t["content"].replace("<video>", video)} for t in TURNS]
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(qwen_tokenizer))
    rendered = fast.apply_chat_template(messages, chat_template=CHATML, tokenize=False)
    assert tok.decode(text.ids.tolist(), skip_special_tokens=False) == rendered
    # the video's placeholders go between the vision markers
    assert text.ids[text.vision_at - 1] == tok.token_to_id("<|vision_start|>")
    assert text.ids[text.vision_at] == tok.token_to_id("<|vision_end|>")


def test_loss_mask_is_the_assistant_spans_and_their_im_end(qwen_tokenizer):
    tok = load_tokenizer(qwen_tokenizer, QWEN)
    text = tokenize_turns(tok, TURNS, fmt=QWEN)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], text.loss_mask.astype(np.int8), [0]])))
    spans = [tok.decode(text.ids[a:b].tolist(), skip_special_tokens=False) for a, b in edges.reshape(-1, 2)]
    assert spans == [t["content"] + "<|im_end|>" for t in TURNS if t["role"] == "assistant"]


def test_a_tokenizer_without_the_formats_tokens_is_refused_by_name(tmp_path):
    path = tmp_path / "tokenizer.json"
    train_tokenizer(["plain words"] * 5, path, vocab_size=300)  # longshot's tokens only
    with pytest.raises(TextError, match=re.escape("<|im_start|>")):
        load_tokenizer(path, QWEN)


def test_format_from_a_file_beside_the_tokenizer(tmp_path, qwen_tokenizer):
    (tmp_path / "tokenizer.json").write_bytes(qwen_tokenizer.read_bytes())
    assert chat_format(None, tmp_path / "tokenizer.json").name == "longshot"
    (tmp_path / "chat_format.json").write_text(json.dumps({**QWEN.to_dict(), "name": "mine"}))
    fmt = chat_format(None, tmp_path / "tokenizer.json")
    assert fmt.name == "mine" and fmt.placeholder == "<|video_pad|>"
    with pytest.raises(ChatFormatError, match="nope"):
        chat_format("nope")
    (tmp_path / "bad.json").write_text(json.dumps({"name": "x", "role_open": {"user": "U"}}))
    with pytest.raises(ChatFormatError):
        chat_format(str(tmp_path / "bad.json"))
