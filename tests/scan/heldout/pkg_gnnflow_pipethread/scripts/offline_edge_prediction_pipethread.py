"""Source: GNNFlow (github jasperzhong/GNNFlow), commit
01b67d8251447aa25f0a0ee3f2583cab74cccd9b (2023-03-09),
scripts/offline_edge_prediction_pipethread.py, lines 1-39 and 365-420
(verbatim minimization).

Driver: creates one dedicated stream per worker on the main thread (explicit
device) and dispatches training_batch to a ThreadPool. Nothing to report in
this module itself.
"""
from multiprocessing.pool import ThreadPool
from queue import Queue
from threading import Lock

import torch

from scripts.train import training_batch


def train(args, device, model, optimizer, criterion, sampler, cache, train_loader):
    # create threadpool
    num_process = 10
    # pool = ThreadPool(processes=num_process)
    # pool = ThreadPoolExecutor(max_workers=num_process)
    stream_pool = [torch.cuda.Stream(device=device, priority=0)
                   for _ in range(num_process)]

    lock_pool = [Lock() for _ in range(5)]  # 5 stages
    signal_queue = Queue(maxsize=num_process)

    for e in range(args.epoch):
        model.train()
        cache.reset()
        pool = ThreadPool(processes=num_process)

        train_iter = enumerate(train_loader)

        while True:
            try:
                i, (target_nodes, ts, eid) = next(train_iter)
            except StopIteration:
                break

            pool.apply_async(training_batch, args=(model, sampler, cache, target_nodes,
                                                   ts, eid, device, args.distributed, optimizer, criterion, stream_pool[i % num_process], signal_queue, lock_pool, i, args.rank))

        pool.close()
        pool.join()
