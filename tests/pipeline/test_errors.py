import pickle

import pytest

from pipeline.errors import DecodeError, InputError, ManifestError, PlanError, ProbeError, TextError


def test_row_names_input_stage_and_reason():
    err = ProbeError("/data/a.mp4", "empty file", id="a")
    assert err.as_row() == {"id": "a", "input": "/data/a.mp4", "stage": "probe", "reason": "empty file"}
    assert "/data/a.mp4" in str(err) and "empty file" in str(err)


@pytest.mark.parametrize("cls,stage", [(ManifestError, "manifest"), (ProbeError, "probe"), (PlanError, "plan"),
                                       (DecodeError, "decode"), (TextError, "text")])
def test_subclasses_fix_their_stage_and_survive_pickling(cls, stage):
    err = cls("m.jsonl:3", "some reason", id=None, detail="library said x")
    assert isinstance(err, InputError) and err.stage == stage
    back = pickle.loads(pickle.dumps(err))  # errors travel between Ray workers
    assert type(back) is cls and back.as_row() == err.as_row() and back.detail == "library said x"


def test_unknown_stage_is_rejected():
    with pytest.raises(ValueError):
        InputError("x", "encode", "nope")
