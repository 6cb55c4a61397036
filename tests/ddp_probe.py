"""Run under torchrun by test_train.py: trains two epochs of fold 1 (the first with a frozen backbone) and prints,
from rank 0, one line `PROBE <json>` with what every rank saw: its sample indices, a random draw after the
epoch seeding, its weights' checksum and the reported loss."""

import json
import os
import sys

import torch
import torch.distributed as dist

from maskcomp.core.config import load_config
from maskcomp.core.context import Context
from maskcomp.core.device import start_distributed
from maskcomp.data.tables import load_train
from maskcomp.runs import open_run
from maskcomp.train.trainer import FoldTrainer, run_manifest

cfg = load_config("configs/sample.yaml", sys.argv[1:])
place = start_distributed(cfg.train.device)
ctx = Context(cfg)
trainer = FoldTrainer(ctx, 1, load_train(ctx), open_run(cfg, run_manifest(ctx), write=place.is_main), place)
trainer.sampler.set_epoch(0)
seen = [index for index, _ in trainer.sampler]
trainer._seed_epoch(0)
draw = torch.rand(1).item()
losses = [trainer._train_epoch(epoch)[0] for epoch in range(2)]
checksum = sum(p.detach().double().sum().item() for p in trainer.model.parameters())
report = [None] * place.world
dist.all_gather_object(
    report,
    {
        "rank": place.rank,
        "seen": seen,
        "draw": draw,
        "checksum": checksum,
        "losses": losses,
        "backend": dist.get_backend(),
    },
)
if place.is_main:
    print("PROBE " + json.dumps(report), flush=True)
dist.barrier()
dist.destroy_process_group()
# skip interpreter finalisation: tearing down gloo's and the intra-op pool's C++ threads there has aborted
# ("terminate called without an active exception") once in a clean-clone run, after everything checked was reported
os._exit(0)
