import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models

from pipeline.errors import TextError
from pipeline.text import SPECIAL_TOKENS, load_tokenizer, tokenize_turns
from pipeline.turns import caption_turns


def spans(tokenizer, text_ids):
    """Split ids at special tokens: [(special token or None, [ids...])]."""
    special = {tokenizer.token_to_id(t): t for t in SPECIAL_TOKENS}
    out = []
    for i in text_ids.tolist():
        if i in special:
            out.append((special[i], []))
        else:
            out[-1][1].append(i)
    return out


def test_template_mask_and_vision_position(tokenizer):
    turns = [{"role": "system", "content": "Be brief."},
             {"role": "user", "content": "Look: <video> What happens?"},
             {"role": "assistant", "content": "Two people ride bicycles."},
             {"role": "user", "content": "And then?"},
             {"role": "assistant", "content": "They turn left."}]
    text = tokenize_turns(tokenizer, turns)
    assert text.ids.dtype == np.int32 and text.loss_mask.dtype == bool and len(text.ids) == len(text.loss_mask)
    layout = spans(tokenizer, text.ids)
    assert [s for s, _ in layout] == ["<|system|>", "<|end|>", "<|user|>", "<|end|>", "<|assistant|>", "<|end|>",
                                      "<|user|>", "<|end|>", "<|assistant|>", "<|end|>"]
    # content round-trips, with the <video> marker cut out
    contents = [tokenizer.decode(ids) for s, ids in layout if s != "<|end|>"]
    assert contents == ["Be brief.", "Look:  What happens?", "Two people ride bicycles.", "And then?",
                        "They turn left."]
    # loss exactly on assistant content and the <|end|> closing it
    end, assistant = tokenizer.token_to_id("<|end|>"), tokenizer.token_to_id("<|assistant|>")
    expected, in_assistant = [], False
    for i in text.ids.tolist():
        if i == assistant:
            in_assistant = True
            expected.append(False)
            continue
        expected.append(in_assistant)
        if i == end:
            in_assistant = False
    assert text.loss_mask.tolist() == expected
    # the video goes right where the marker was
    assert tokenizer.decode(text.ids[:text.vision_at].tolist()).endswith("Look: ")
    assert tokenizer.decode(text.ids[text.vision_at:].tolist()).startswith(" What happens?")


def test_caption_puts_the_video_at_the_start_of_the_user_turn(tokenizer):
    text = tokenize_turns(tokenizer, caption_turns("A red car drives past."))
    user = tokenizer.token_to_id("<|user|>")
    assert text.ids[0] == user and text.vision_at == 1
    no_marker = tokenize_turns(tokenizer, [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                                           {"role": "assistant", "content": "A"}])
    assert no_marker.ids[no_marker.vision_at - 1] == user


@settings(max_examples=50, deadline=None)
@given(st.text(min_size=1, max_size=80).filter(lambda s: s.strip() and "<video>" not in s and "<|" not in s))
def test_any_assistant_text_round_trips(tokenizer, caption):
    text = tokenize_turns(tokenizer, caption_turns(caption))
    trained = text.ids[text.loss_mask][:-1]  # assistant content, without the closing <|end|>
    assert tokenizer.decode(trained.tolist(), skip_special_tokens=False) == caption


def test_text_errors(tokenizer, tmp_path):
    with pytest.raises(TextError, match="special token in text"):
        tokenize_turns(tokenizer, caption_turns("fake <|assistant|> turn"))
    with pytest.raises(TextError, match="multiple <video> markers"):
        tokenize_turns(tokenizer, [{"role": "user", "content": "<video> <video>"},
                                   {"role": "assistant", "content": "a"}], input="m.jsonl:3")
    with pytest.raises(TextError, match="file not found"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TextError, match="not a tokenizer file"):
        load_tokenizer(tmp_path / "bad.json")
    Tokenizer(models.BPE()).save(str(tmp_path / "plain.json"))
    with pytest.raises(TextError, match="missing special tokens"):
        load_tokenizer(tmp_path / "plain.json")


def test_saved_tokenizer_loads(tokenizer, tmp_path):
    path = tmp_path / "t.json"
    tokenizer.save(str(path))
    loaded = load_tokenizer(path)
    turns = caption_turns("A rabbit.")
    assert np.array_equal(tokenize_turns(loaded, turns).ids, tokenize_turns(tokenizer, turns).ids)
    assert json.loads(path.read_text())["model"]["type"] == "BPE"
