"""Distributed helpers: no-ops in one process; a real 2-process gloo group via mp.spawn."""
import json
import os
import random
import socket

import numpy as np
import torch
import torch.multiprocessing as mp

from hrnas.data.loader import seed_worker
from hrnas.engine import distributed as D


def test_single_process_is_a_no_op(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = D.init_distributed()
    assert (info.rank, info.world_size, info.local_rank) == (0, 1, 0)
    assert D.is_main() and D.world_size() == 1 and D.rank() == 0
    t = torch.tensor([1.0, 2.0])
    assert D.all_reduce_sum(t) is t and t.tolist() == [1.0, 2.0]
    assert D.broadcast_object({"a": 1}) == {"a": 1}
    D.barrier()
    D.cleanup()


def test_seeding_is_reproducible_and_rank_dependent():
    assert D.seed_everything(7, rank=1) == 8
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    D.seed_everything(7, rank=1)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
    D.seed_everything(7, rank=0)
    assert torch.rand(1).item() != a[2]
    torch.manual_seed(5)
    seed_worker(0)
    assert np.random.rand() == np.random.RandomState(5).rand()


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank))
    info = D.init_distributed()
    t = D.all_reduce_sum(torch.tensor([rank + 1.0, 10.0]))
    obj = D.broadcast_object({"from": rank} if rank == 0 else None)
    result = {"rank": info.rank, "world": D.world_size(), "main": D.is_main(),
              "sum": t.tolist(), "obj": obj}
    D.barrier()
    D.cleanup()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


def test_two_process_gloo_all_reduce(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r, res in enumerate(results):
        assert res["rank"] == r and res["world"] == 2 and res["main"] == (r == 0)
        assert res["sum"] == [3.0, 20.0]
        assert res["obj"] == {"from": 0}
