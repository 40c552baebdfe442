"""Guide: SigLIP training at scale: one model, several devices, on every backend.

The sigmoid loss always covers the *global* batch: every image meets the texts of
all devices, so a model trained on N devices is the model trained on one. Each
backend has its own way to spread `fit` over devices; this guide runs the one of
the backend it is started with (`KERAS_BACKEND`, default JAX) on this CPU:

- JAX, `keras.distribution`: data parallel, and the weights sharded FSDP-style x
  tensor parallel, on 4 virtual devices. The loss is a ring of `ppermute`s (the
  SigLIP paper's scheme), chunked so no device ever holds a B x B logit matrix.
- TensorFlow, `tf.distribute.MirroredStrategy` over 4 logical CPUs: the same
  `fit`, inside `strategy.scope()`; the loss all-gathers the texts.
- torch, `torch.distributed` (2 processes, gloo): each process runs its half of
  the batch; the loss all-gathers the texts and the gradients are averaged over
  the processes (what `DistributedDataParallel` does) before the optimizer step.
  The processes fork from the guide's own process where the system can fork
  (spawned ones import the frameworks again: 54 s -> 22 s for this guide on 2
  busy cores).

Each run trains the same model from the same weights on one device as well and
asserts the multi-device one ends at the same weights (bound 1e-3; measured JAX
1.2e-4 data parallel, 1.3e-4 FSDP x tensor parallel, TensorFlow 1.1e-4, torch
9.1e-5; 46 s, 59 s and 22 s on 2 busy cores). The time goes to start-up, tracing
and compilation more than to the 16 steps (half the steps: TensorFlow 59 s -> 56 s),
so there is no smaller configuration. On a TPU pod slice or GPU host the code is
the same (see the end of this file for several hosts).

    python guides/training_at_scale.py                          # JAX
    KERAS_BACKEND=torch python guides/training_at_scale.py
"""

import os
import time

START = time.time()
# Devices must be set up before the framework starts.
BACKEND = os.environ.setdefault("KERAS_BACKEND", "jax")
if BACKEND == "jax":
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
elif BACKEND == "tensorflow":
    import tensorflow as tf

    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 4)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_siglip as ks  # noqa: E402
from keras_siglip.data import shapes  # noqa: E402

BATCH, EPOCHS = 32, 2


def captioned_batches():
    """256 preprocessed shapes pairs {"images": (256, 48, 48, 3), "token_ids": (256, 16)}
    and the model sizes their preprocessor sets."""
    preprocessor = ks.models.SigLIPPreprocessor.from_preset("siglip2_shapes_tiny")
    data = shapes.ShapesDataset(256, seed=7).arrays()
    x = preprocessor({"images": data["images"], "texts": list(data["captions"])})
    sizes = {"image_size": tuple(preprocessor.image_converter.image_size),
             "vocabulary_size": preprocessor.tokenizer.vocabulary_size(),
             "sequence_length": preprocessor.sequence_length}
    return {key: keras.ops.convert_to_numpy(value) for key, value in x.items()}, sizes


def build(sizes):
    """A small two-tower model of the preprocessor's `sizes`, the same weights every time."""
    keras.utils.set_random_seed(0)
    vision = ks.models.SigLIPVisionEncoder(patch_size=8, width=64, depth=2, num_heads=4, mlp_dim=128,
                                           image_size=sizes["image_size"])
    text = ks.models.SigLIPTextEncoder(vocabulary_size=sizes["vocabulary_size"], width=64, depth=2, num_heads=4,
                                       mlp_dim=128, sequence_length=sizes["sequence_length"], num_classes=64)
    return ks.models.SigLIPBackbone(vision, text)


def compile_for(model, x):
    """The papers' optimizer (AdamW, decoupled decay on kernels, beta2 0.95, clipping,
    warmup + cosine) and the loss in blocks of 16 texts."""
    model.compile(total_steps=EPOCHS * len(x["images"]) // BATCH, loss=ks.losses.SigmoidLoss(chunk_size=16))


def report(label, losses, logs=None, layout=""):
    extra = (f", t = {logs['temperature'][-1]:.2f}, b = {logs['bias'][-1]:.2f}, pos/neg logit "
             f"{logs['positive_logit'][-1]:.2f} / {logs['negative_logit'][-1]:.2f}") if logs else ""
    print(f"{label:>28}: loss {losses[0]:.4f} -> {losses[-1]:.4f}{extra}{layout} [{time.time() - START:.0f}s]")


def check_same_model(name, one, weights, one_loss, losses):
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(one, weights))
    # Float32 sums in another order; Adam's normalisation magnifies the tiny
    # gradient differences a little (SGD gives < 1e-6, see the tests).
    print(f"{name}: largest weight difference to one device after training: {diff:.1e}")
    # The claim: the devices train the same model as one device. A ring that never
    # passes the texts on (each image meets only its own device's 8) ends 16
    # steps 5.8e-3 away.
    assert diff < 1e-3, f"{name} trained another model than one device: {diff:.1e}"
    assert np.allclose(losses, one_loss, atol=1e-4), (name, losses, one_loss)
    # Learning happened.
    assert one_loss[-1] < 0.8 * one_loss[0], one_loss


def jax_meshes(x, sizes):
    devices = keras.distribution.list_devices()
    print(f"{len(devices)} devices: {[str(d) for d in devices]}")

    def train(distribution, label):
        keras.distribution.set_distribution(distribution)
        try:
            model = build(sizes)
            compile_for(model, x)
            logs = model.fit(x, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0).history
            kernel = next(v for v in model.weights if v.path.endswith("block_0/attention/query/kernel"))
            layout = getattr(kernel.value.sharding, "spec", "one device")
            report(label, logs["loss"], logs, f"; a query kernel: {layout}")
            return model.get_weights(), logs["loss"], layout
        finally:
            keras.distribution.set_distribution(None)

    # One device, then data parallel over 4 (the batch of 32 splits 8 per device;
    # weights replicated), then FSDP x tensor parallel on a 2 x 2 mesh.
    one, one_loss, _ = train(None, "one device")
    data_parallel, data_parallel_loss, replicated = train(
        keras.distribution.DataParallel(devices=devices), "data parallel x4")
    mesh = keras.distribution.DeviceMesh((2, 2), ["batch", "model"], devices)
    sharded, sharded_loss, split = train(
        keras.distribution.ModelParallel(layout_map=ks.models.SigLIPBackbone.get_layout_map(mesh),
                                         batch_dim_name="batch"),
        "FSDP 2 x tensor parallel 2",
    )
    check_same_model("data parallel", one, data_parallel, one_loss, data_parallel_loss)
    check_same_model("FSDP x tensor parallel", one, sharded, one_loss, sharded_loss)
    # Data parallel replicated the weights and the 2 x 2 mesh split them over both axes.
    assert tuple(replicated) == (None, None, None) and tuple(split) == ("batch", "model", None), (replicated, split)


def tensorflow_replicas(x, sizes):
    def train(strategy, label):
        with strategy.scope():  # variables (weights, optimizer state) mirrored on every replica
            model = build(sizes)
            compile_for(model, x)
        logs = model.fit(x, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0).history
        report(label, logs["loss"], logs)
        return model.get_weights(), logs["loss"]

    one, one_loss = train(tf.distribute.get_strategy(), "one device")
    mirrored = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(4)])
    print(f"{mirrored.num_replicas_in_sync} replicas; each takes {BATCH // mirrored.num_replicas_in_sync} "
          f"pairs of every batch of {BATCH}")
    weights, losses = train(mirrored, "mirrored x4")
    check_same_model("mirrored replicas", one, weights, one_loss, losses)


WORLD = 2  # torch processes


def torch_train(model, x, rank=0, world=1):
    """`fit`'s step by hand: this process's share of each batch, the loss over the
    global batch, gradients averaged over the processes, one optimizer step."""
    import torch
    import torch.distributed as dist

    compile_for(model, x)
    model.optimizer.build(model.trainable_variables)
    losses = []
    for _ in range(EPOCHS):
        epoch = []
        for start in range(0, len(x["images"]), BATCH):
            share = slice(start + rank * BATCH // world, start + (rank + 1) * BATCH // world)
            local = {key: value[share] for key, value in x.items()}
            for variable in model.trainable_variables:
                variable.value.grad = None
            loss = model.compute_loss(local, None, model(local, training=True))  # all-gathers the texts
            loss.backward()
            grads = [variable.value.grad for variable in model.trainable_variables]
            loss = loss.detach()  # this process's images against every text
            if world > 1:
                for value in (*grads, loss):
                    dist.all_reduce(value)
                    value /= world
            with torch.no_grad():
                model.optimizer.apply(grads, model.trainable_variables)
            epoch.append(float(loss))
        losses.append(float(np.mean(epoch)))
    return [keras.ops.convert_to_numpy(w) for w in model.weights], losses


def torch_worker(rank, init_file, out_file, x, sizes):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    weights, losses = torch_train(build(sizes), x, rank, WORLD)
    dist.destroy_process_group()
    if rank == 0:
        np.savez(out_file, losses=np.array(losses), *weights)


def torch_processes(x, sizes):
    import tempfile

    import torch.multiprocessing as mp

    # The processes fork from this one where the system can (they start with the framework
    # imported and the data ready; spawned ones import everything again), before this
    # process trains anything: autograd's threads do not survive a fork.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with tempfile.TemporaryDirectory() as folder:
        out_file = os.path.join(folder, "rank0.npz")
        mp.start_processes(torch_worker, args=(os.path.join(folder, "init"), out_file, x, sizes), nprocs=WORLD,
                           start_method=method)
        with np.load(out_file, allow_pickle=False) as saved:
            losses = list(saved["losses"])
            weights = [saved[f"arr_{i}"] for i in range(len(saved.files) - 1)]
    report(f"{WORLD} processes (gloo, {method})", losses)
    one, one_loss = torch_train(build(sizes), x)
    report("one process", one_loss)
    check_same_model(f"{WORLD} torch processes", one, weights, one_loss, losses)


if __name__ == "__main__":  # torch's processes import this file again
    x, sizes = captioned_batches()
    {"jax": jax_meshes, "tensorflow": tensorflow_replicas, "torch": torch_processes}[BACKEND](x, sizes)


# Several hosts (a TPU pod slice, several GPU machines): run this same program on
# every host, each feeding its share of the global batch (a per-host `tf.data`
# shard), after one line that reads the cluster: `keras.distribution.initialize()`
# on JAX (then build the mesh over `keras.distribution.list_devices()`, every host's
# devices), `tf.distribute.MultiWorkerMirroredStrategy()` on TensorFlow,
# `torch.distributed.init_process_group("nccl")` under `torchrun` on torch. The
# sigmoid loss sees the global batch in all three.
