"""Opens an irec export as a Python user would (numpy, pyarrow) and checks it against what the
Rust test read from the server's store (expected.json): counts, dtypes, shapes and values.

Run by server/tests/export.rs: python3 check_export.py <export dir> <expected.json>
"""
import json
import sys

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq

out, expected_path = sys.argv[1], sys.argv[2]
want = json.load(open(expected_path))
meta = json.load(open(f"{out}/metadata.json"))
n, width = want["turns"], meta["observation_width"]

d = np.load(f"{out}/d.npz")
dtypes = {
    "observations": (np.float32, (n, width)),
    "actions": (np.int32, (n, want["attributes"])),
    "rewards": (np.float32, (n,)),
    "logged_rewards": (np.float32, (n,)),
    "terminals": (np.float32, (n,)),
    "timeouts": (np.float32, (n,)),
    "episode_ids": (np.int64, (n,)),
    "rounds": (np.int32, (n,)),
    "turns": (np.int32, (n,)),
    "shown_items": (np.int32, (n,)),
}
for name, (dtype, shape) in dtypes.items():
    a = d[name]
    assert a.dtype == dtype, f"{name}: dtype {a.dtype}, want {dtype}"
    assert a.shape == shape, f"{name}: shape {a.shape}, want {shape}"
assert list(d["action_sizes"]) == want["action_sizes"], d["action_sizes"]
assert len(np.unique(d["episode_ids"])) == want["episodes"]
assert int(d["terminals"].sum()) == want["successes"]
assert int((d["terminals"] + d["timeouts"]).sum()) == want["episodes"], "one end per episode"
# Every episode starts from a zero observation (nothing seen before its first action).
starts = d["turns"] == 0
assert int(starts.sum()) == want["episodes"]
assert not d["observations"][starts].any()
assert d["observations"][~starts].any(axis=1).all()

table = ds.dataset(f"{out}/parquet", format="parquet", partitioning="hive").to_table()
assert table.num_rows == n, table.num_rows
per_round = {}
for r in table.column("round").to_pylist():
    per_round[str(r)] = per_round.get(str(r), 0) + 1
assert per_round == {k: v["turns"] for k, v in want["rounds"].items()}, per_round
assert table.schema.field("utterance").type == "string"
assert table.schema.field("termination").type == "bool"
assert table.schema.field("reward").type == "float"
footer = pq.read_metadata(f"{out}/parquet/round=0/part-0.parquet").metadata
assert footer[b"irec.schema"] == meta["schema"].encode()
assert footer[b"irec.round"] == b"0"

# The first episode, value by value, in both files.
first = want["first_episode"]
rows = table.filter(ds.field("episode_id") == first["id"]).sort_by("turn").to_pylist()
assert [r["utterance"] for r in rows] == first["utterances"], rows
assert [r["shown_item"] for r in rows] == first["shown"]
cols = meta["action_columns"]
assert [[r[c] for c in cols] for r in rows] == first["actions"]
np.testing.assert_allclose([r["logged_reward"] for r in rows], first["logged_rewards"], rtol=1e-6)
np.testing.assert_allclose([r["reward"] for r in rows], first["rewards"], rtol=1e-6)
mask = d["episode_ids"] == first["id"]
assert d["actions"][mask].tolist() == first["actions"]
np.testing.assert_allclose(d["logged_rewards"][mask], first["logged_rewards"], rtol=1e-6)
assert d["shown_items"][mask].tolist() == first["shown"]
print(f"ok: {want['episodes']} episodes, {n} turns, {len(per_round)} rounds, observations {width} wide")
