"""A real 2-process torch.distributed (gloo) run: ranks come from the process group, every sample
is seen exactly once (plus padding), and every rank takes the same number of steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from servers import free_port

WORKER = textwrap.dedent("""
    import json, sys
    import torch
    import torch.distributed as dist
    from shardkit import StreamingDataset, make_loader

    root, out = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    ds = StreamingDataset(root, seed=4)  # rank and world size from the process group
    loader = make_loader(ds, 5, num_workers=2)
    epochs = []
    for epoch in range(2):
        ids, steps = [], 0
        for padded, lengths, labels in loader:
            step = torch.ones(1)
            dist.all_reduce(step)  # a DDP step: would hang if a rank ran out early
            ids += padded[:, 0].tolist()
            steps += 1
        epochs.append({"ids": ids, "steps": steps})
    everything = [None, None]
    dist.all_gather_object(everything, {"rank": ds.rank, "world": ds.world_size, "len": len(ds), "epochs": epochs})
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(everything, f)
    dist.destroy_process_group()
""")


def test_two_gloo_ranks_see_every_sample_once(seq_root, tmp_path):
    script, out = tmp_path / "rank.py", tmp_path / "out.json"
    script.write_text(WORKER)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    procs = [subprocess.Popen([sys.executable, str(script), str(seq_root), str(out)],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(2)]
    try:
        assert [p.wait(timeout=120) for p in procs] == [0, 0]
    finally:
        for p in procs:
            p.kill()
    ranks = json.loads(out.read_text())
    assert [(r["rank"], r["world"], r["len"]) for r in ranks] == [(0, 2, 52), (1, 2, 52)]
    for epoch in range(2):
        ids = [r["epochs"][epoch]["ids"] for r in ranks]
        assert [len(i) for i in ids] == [52, 52]
        assert ranks[0]["epochs"][epoch]["steps"] == ranks[1]["epochs"][epoch]["steps"]
        together = ids[0] + ids[1]
        assert set(together) == set(range(103)) and len(together) == 104, "one sample repeated as padding"
    assert ranks[0]["epochs"][0]["ids"] != ranks[0]["epochs"][1]["ids"]
