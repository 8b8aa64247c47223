"""ADAPTED from GNNFlow (github jasperzhong/GNNFlow), commit
01b67d8251447aa25f0a0ee3f2583cab74cccd9b, scripts/train.py lines 1-50 and
scripts/offline_edge_prediction_pipethread.py lines 365-420 (see
pkg_gnnflow_pipethread for the real two-module form).

Adaptation: (1) the caller is inlined into the same module as
training_batch; (2) the multiprocessing ThreadPool.apply_async dispatch is
replaced by the ThreadPoolExecutor(max_workers=num_process) alternative that
the real code carries as a commented-out line, using executor.submit.
training_batch body is the real code, minimized.
"""
from concurrent.futures import ThreadPoolExecutor, wait
from threading import Lock

import torch


def training_batch(model, sampler, cache, target_nodes, ts, eid, device, optimizer, criterion, Stream: torch.cuda.Stream, lock_pool, i: int):
    with torch.cuda.stream(Stream):
        with lock_pool[0]:
            mfgs = sampler.sample(target_nodes, ts)
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
                model.memory.update_mem_mail(**last_updated, neg_sample_ratio=1)


def train(args, device, model, optimizer, criterion, sampler, cache, train_loader):
    num_process = 10
    pool = ThreadPoolExecutor(max_workers=num_process)
    stream_pool = [torch.cuda.Stream(device=device, priority=0)
                   for _ in range(num_process)]
    lock_pool = [Lock() for _ in range(5)]  # 5 stages
    futures = []
    for i, (target_nodes, ts, eid) in enumerate(train_loader):
        futures.append(pool.submit(training_batch, model, sampler, cache, target_nodes,
                                   ts, eid, device, optimizer, criterion,
                                   stream_pool[i % num_process], lock_pool, i))
    wait(futures)
