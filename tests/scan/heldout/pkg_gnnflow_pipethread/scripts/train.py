"""Source: GNNFlow (github jasperzhong/GNNFlow), commit
01b67d8251447aa25f0a0ee3f2583cab74cccd9b (2023-03-09), scripts/train.py,
lines 1-50 (verbatim minimization; distributed branches and logging cut).

training_batch runs on a multiprocessing.pool.ThreadPool worker thread
(submitted with pool.apply_async from
scripts/offline_edge_prediction_pipethread.py -- a different module), and
inside it explicitly makes the legacy default stream current. Hard case: the
helper thread is reached through ThreadPool.apply_async across modules.
"""
from queue import Queue
from threading import Lock
from typing import List

import torch

from gnnflow.utils import mfgs_to_cuda


def training_batch(model, sampler, cache, target_nodes, ts, eid, device, distributed, optimizer, criterion, Stream: torch.cuda.Stream, queue: Queue, lock_pool: List[Lock], i: int, rank: int):
    with torch.cuda.stream(Stream):
        with lock_pool[0]:
            mfgs = sampler.sample(target_nodes, ts)
        with lock_pool[1]:
            mfgs_to_cuda(mfgs, device)
            mfgs = cache.fetch_feature(
                mfgs, eid, target_edge_features=True)  # because all use memory
        with lock_pool[2]:
            b = mfgs[0][0]  # type: DGLBlock
            model.memory.prepare_input(b)
        with lock_pool[3]:
            with torch.cuda.stream(torch.cuda.default_stream()):  # expect: SC105
                last_updated = model.memory_updater(mfgs[0][0])

                optimizer.zero_grad()

                pred_pos, pred_neg = model(mfgs)

                loss = criterion(pred_pos, torch.ones_like(pred_pos))

                loss += criterion(pred_neg, torch.zeros_like(pred_neg))
                loss.backward()
                optimizer.step()
        with lock_pool[4]:
            with torch.no_grad():
                model.memory.update_mem_mail(
                    **last_updated, edge_feats=cache.target_edge_features.get(),
                    neg_sample_ratio=1)
