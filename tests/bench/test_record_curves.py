"""bench/record_curves.py --complete: which configurations a recording lacks (no training here)."""
import json
import shutil

from bench.record_curves import missing_proposals
from search import replay


def test_the_shipped_recording_lacks_no_proposal_of_its_seeded_sampler():
    # The recording run's sampler is seeded per arm, so asking again gives its configurations back:
    # every one of them has a curve (the 24th resnet34 one was added by --complete).
    rec = replay.load_recording("bench/curves")
    assert missing_proposals(rec) == []
    assert sorted(len(rec.of(a)) for a in rec.arms()) == [24, 24]


def test_a_curve_left_out_is_named_with_its_position_and_configuration(tmp_path):
    shutil.copy("bench/curves/space.yaml", tmp_path / "space.yaml")
    doc = json.loads(open("bench/curves/curves.json").read())
    arm = "resnet34-v1-none-t5"
    dropped = [t for t in doc["trials"] if t["arm"] == arm][5]
    doc["trials"].remove(dropped)
    (tmp_path / "curves.json").write_text(json.dumps(doc))
    missing = missing_proposals(replay.load_recording(tmp_path))
    assert [(a.name, p) for _, a, p in missing] == [(arm, dropped["params"])]
