"""Guide: SigLIP training at scale with keras.distribution (JAX).

The same `fit` runs on one device, on a data-parallel mesh, or with the weights
sharded FSDP-style and tensor parallel; the sigmoid loss always covers the
*global* batch: every image meets the texts of all devices (a ring of
`ppermute`s, the SigLIP paper's scheme), chunked so no device ever holds a
B x B logit matrix. Here on 4 virtual CPU devices; on a TPU pod slice or a GPU
host the code is the same (see the end of this file for several hosts).

    python guides/training_at_scale.py
"""

import os

# Virtual devices must be requested before JAX starts; this guide is about JAX meshes.
os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_siglip as ks  # noqa: E402
from keras_siglip.data import shapes  # noqa: E402

devices = keras.distribution.list_devices()
print(f"{len(devices)} devices: {[str(d) for d in devices]}")

# 1. A small two-tower model and a captioned shapes batch stream.
preprocessor = ks.models.SigLIPPreprocessor.from_preset("siglip2_shapes_tiny")
data = shapes.ShapesDataset(256, seed=7).arrays()
x = preprocessor({"images": data["images"], "texts": list(data["captions"])})


def build():
    keras.utils.set_random_seed(0)
    vision = ks.models.SigLIPVisionEncoder(patch_size=8, width=64, depth=2, num_heads=4, mlp_dim=128,
                                           image_size=preprocessor.image_converter.image_size)
    text = ks.models.SigLIPTextEncoder(vocabulary_size=preprocessor.tokenizer.vocabulary_size(), width=64,
                                       depth=2, num_heads=4, mlp_dim=128,
                                       sequence_length=preprocessor.sequence_length, num_classes=64)
    return ks.models.SigLIPBackbone(vision, text)


def train(distribution, label):
    keras.distribution.set_distribution(distribution)
    try:
        model = build()
        # The papers' optimizer (AdamW, decoupled decay on kernels, beta2 0.95,
        # clipping, warmup + cosine) and the loss in blocks of 16 texts.
        steps = 2 * len(data["images"]) // 32
        model.compile(total_steps=steps, loss=ks.losses.SigmoidLoss(chunk_size=16))
        logs = model.fit(x, batch_size=32, epochs=2, shuffle=False, verbose=0).history
        kernel = next(v for v in model.weights if v.path.endswith("block_0/attention/query/kernel"))
        layout = getattr(kernel.value.sharding, "spec", "one device")
        print(f"{label:>28}: loss {logs['loss'][0]:.4f} -> {logs['loss'][-1]:.4f}, t = {logs['temperature'][-1]:.2f}, "
              f"b = {logs['bias'][-1]:.2f}, pos/neg logit {logs['positive_logit'][-1]:.2f} / "
              f"{logs['negative_logit'][-1]:.2f}; a query kernel: {layout}")
        return model.get_weights(), logs["loss"], layout
    finally:
        keras.distribution.set_distribution(None)


# 2. One device, then data parallel over 4 (the batch of 32 splits 8 per device;
#    weights replicated), then FSDP x tensor parallel on a 2 x 2 mesh.
one, one_loss, _ = train(None, "one device")
data_parallel, data_parallel_loss, replicated = train(keras.distribution.DataParallel(devices=devices), "data parallel x4")
mesh = keras.distribution.DeviceMesh((2, 2), ["batch", "model"], devices)
sharded, sharded_loss, split = train(
    keras.distribution.ModelParallel(layout_map=ks.models.SigLIPBackbone.get_layout_map(mesh), batch_dim_name="batch"),
    "FSDP 2 x tensor parallel 2",
)
for name, weights, losses in (("data parallel", data_parallel, data_parallel_loss),
                              ("FSDP x tensor parallel", sharded, sharded_loss)):
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(one, weights))
    # Float32 sums in another order; Adam's normalisation magnifies the tiny
    # gradient differences a little (SGD gives < 1e-6, see the tests).
    print(f"{name}: largest weight difference to one device after training: {diff:.1e}")
    # The claim: the mesh trains the same model as one device. A ring that never
    # passes the texts on (each image meets only its own device's 8) ends 16
    # steps 5.8e-3 away.
    assert diff < 1e-3, f"{name} trained another model than one device: {diff:.1e}"
    assert np.allclose(losses, one_loss, atol=1e-4), (name, losses, one_loss)

# Learning happened, data parallel replicated the weights and the 2 x 2 mesh
# split them over both axes.
assert one_loss[-1] < 0.8 * one_loss[0], one_loss
assert tuple(replicated) == (None, None, None) and tuple(split) == ("batch", "model", None), (replicated, split)

# 3. Several hosts (a TPU pod slice, several GPU machines): run this same program
#    on every host, with one line first:
#
#        keras.distribution.initialize()   # reads the cluster from the TPU / env
#
#    then build the mesh over `keras.distribution.list_devices()` (all hosts'
#    devices) and feed each host its share of the global batch (a per-host
#    `tf.data` shard); `fit` and the ring loss see the global batch.
