"""SigLIP's loss across 2 torch processes (torch.distributed, gloo) vs one process.

Each process runs the model on its half of the batch and `compute_loss`
(which all-gathers the texts); gradients averaged over the processes (what
DistributedDataParallel does) must equal the one-process gradients of the
global loss. Run by test_distribution.py in a subprocess; prints one JSON object.
"""

import json
import os
import tempfile

os.environ["KERAS_BACKEND"] = "torch"

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

WORLD, BATCH = 2, 8


def batch():
    rng = np.random.default_rng(1)
    token_ids = rng.integers(2, 60, (BATCH, 8)).astype("int32")
    token_ids[:, -1] = 1
    return {"images": rng.uniform(-1, 1, (BATCH, 32, 32, 3)).astype("float32"), "token_ids": token_ids}


def loss_and_grads(model, x, chunk_size=None, cross_device=True):
    from keras_siglip.losses import SigmoidLoss

    model.compile(loss=SigmoidLoss(chunk_size=chunk_size, cross_device=cross_device))
    for v in model.trainable_variables:
        v.value.grad = None
    loss = model.compute_loss(x, None, model(x, training=True))
    loss.backward()
    return float(loss.detach()), [v.value.grad.detach().clone() for v in model.trainable_variables]


def worker(rank, init_file, out_file):
    from tests.helpers import tiny_backbone

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    model = tiny_backbone(seed=0)
    x = batch()
    local = {k: v[rank * BATCH // WORLD:(rank + 1) * BATCH // WORLD] for k, v in x.items()}
    results = {}
    for name, chunk, cross_device in (("gathered", None, True), ("gathered_chunked", 3, True),
                                      ("per_process", None, False)):
        loss, grads = loss_and_grads(model, local, chunk, cross_device)
        for g in grads:  # DDP: mean over processes
            dist.all_reduce(g)
            g /= WORLD
        losses = torch.tensor([loss])
        dist.all_reduce(losses)
        results[name] = (float(losses) / WORLD, [g.numpy() for g in grads])
    dist.destroy_process_group()
    if rank == 0:
        # The reference: one process, the whole batch, no process group.
        loss, grads = loss_and_grads(model, x)
        out = {}
        for name, (got_loss, got_grads) in results.items():
            scale = max(float(g.abs().max()) for g in grads)
            out[name] = {
                "loss": abs(got_loss - loss) / loss,
                "grads": max(float(np.abs(a - b.numpy()).max()) for a, b in zip(got_grads, grads)) / scale,
            }
        with open(out_file, "w") as f:
            json.dump(out, f)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        out_file = os.path.join(tmp, "out.json")
        mp.spawn(worker, args=(os.path.join(tmp, "init"), out_file), nprocs=WORLD)
        with open(out_file) as f:
            print(json.dumps(json.load(f)))


if __name__ == "__main__":
    main()
