"""The sigmoid loss across devices: each device keeps its images and sees every text.

Data-parallel training splits a global batch of `B` pairs into `n` local
batches of `b = B / n`. The SigLIP loss of the global batch needs every image
against every text. Two forms give exactly the global loss:

- **ring** (JAX, `keras.distribution` mesh; SigLIP paper section 3.1): the
  text embeddings travel around the devices' ring with `ppermute`, one block of
  `b` at a time; each device adds the `(b, b)` block of its images against the
  visiting texts (positives only in its own block). Memory per device is
  O(b * b); every device sends its texts n - 1 times.
- **gathered** (TensorFlow `tf.distribute` replicas, torch `torch.distributed`
  processes): all-gather the texts (with gradients), then this replica's images
  against all `B` texts, optionally chunked.
"""

import functools

import keras
from keras import ops

from keras_siglip.losses.sigmoid import chunked_sigmoid_loss, sigmoid_loss_from_embeddings


def _local_loss(images, texts, t, b, chunk_size, positive_offset):
    if chunk_size:
        return chunked_sigmoid_loss(images, texts, t, b, chunk_size, positive_offset)
    return sigmoid_loss_from_embeddings(images, texts, t, b, positive_offset)


def ring_sigmoid_loss(image_embeddings, text_embeddings, log_temperature, bias, mesh, axis_name, chunk_size=None):
    """The global SigLIP loss with texts passed around a JAX device mesh axis.

    Args:
        image_embeddings, text_embeddings: `(B, D)` global arrays (sharded or
            not) on `mesh`; B divisible by the axis size.
        log_temperature, bias: `(1,)`.
        mesh: a `jax.sharding.Mesh` (`keras.distribution.DeviceMesh.backend_mesh`).
        axis_name: the data-parallel axis of `mesh`.
        chunk_size: optional texts per block within each ring step.

    Returns:
        The scalar global loss (summed over texts, mean over the B images),
        replicated; usable inside `jax.jit` and differentiable.
    """
    import jax
    from jax.sharding import PartitionSpec

    num_devices = mesh.shape[axis_name]
    batch = image_embeddings.shape[0]
    if batch % num_devices:
        raise ValueError(
            f"The batch of {batch} pairs does not split over the {num_devices} devices of mesh axis {axis_name!r}."
        )
    local_batch = batch // num_devices
    ring = [(i, (i + 1) % num_devices) for i in range(num_devices)]
    # Recompute each block's logits in the backward pass instead of keeping n of them.
    block = jax.checkpoint(_local_loss, static_argnums=(4, 5)) if not chunk_size else _local_loss

    def per_device(images, texts, t, b):
        # t and b as per-device values: their gradients are then summed over
        # the devices by autodiff (the chunked form's written-out gradient
        # returns per-device parts).
        t, b = (jax.lax.pcast(v, (axis_name,), to="varying") for v in (t, b))
        total = 0.0
        for step in range(num_devices):
            # Step 0 holds this device's own texts (the positives); afterwards an
            # offset past the block makes every pair a negative.
            offset = 0 if step == 0 else local_batch
            total = total + block(images, texts, t, b, chunk_size, offset) * local_batch
            if step + 1 < num_devices:
                texts = jax.lax.ppermute(texts, axis_name, ring)
        return jax.lax.psum(total, axis_name) / batch

    spec = PartitionSpec(axis_name)
    sharded = jax.shard_map(
        per_device, mesh=mesh, in_specs=(spec, spec, PartitionSpec(), PartitionSpec()), out_specs=PartitionSpec()
    )
    args = (image_embeddings, text_embeddings, log_temperature, bias)
    return sharded(*(ops.convert_to_tensor(a) for a in args))


def gathered_sigmoid_loss(image_embeddings, text_embeddings, log_temperature, bias, chunk_size=None):
    """This replica's share of the global SigLIP loss, with all texts gathered.

    Call inside a replica: a `tf.distribute` replica context (TensorFlow) or a
    process of an initialised `torch.distributed` group (torch).

    Args:
        image_embeddings, text_embeddings: `(b, D)` this replica's pairs.
        log_temperature, bias: `(1,)`.
        chunk_size: optional texts per block (`chunked_sigmoid_loss`).

    Returns:
        `L_r`: the mean over this replica's `b` images of the loss summed over
        all `n * b` texts. The global loss is the mean of `L_r` over replicas;
        gradients reach other replicas' text towers through the all-gather
        (its backward sums the text gradients of every replica).
    """
    texts, rank = _all_gather(text_embeddings)
    offset = rank * image_embeddings.shape[0]
    return _local_loss(image_embeddings, texts, log_temperature, bias, chunk_size, offset)


def _all_gather(x):
    """`(b, D)` -> `((n * b, D), replica index)`, differentiable."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        gathered = context.all_gather(x, axis=0)  # static shape lost: restore it
        gathered = tf.ensure_shape(gathered, (context.num_replicas_in_sync * x.shape[0], x.shape[1]))
        return gathered, context.replica_id_in_sync_group
    if backend == "torch":
        import torch.distributed

        return _torch_all_gather().apply(x), torch.distributed.get_rank()
    raise ValueError(f"The gathered sigmoid loss runs on TensorFlow and torch; on {backend} use the ring form.")


@functools.cache
def _torch_all_gather():
    """The autograd function, built on first use (torch is imported only then)."""
    import torch
    import torch.distributed as dist

    class AllGather(torch.autograd.Function):
        """All-gather along dim 0; the backward sums every process's gradient
        for this process's slice (reduce-scatter)."""

        @staticmethod
        def forward(ctx, x):
            out = x.new_empty((dist.get_world_size() * x.shape[0], *x.shape[1:]))
            dist.all_gather_single(out, x.contiguous())
            return out

        @staticmethod
        def backward(ctx, grad):
            out = grad.new_empty((grad.shape[0] // dist.get_world_size(), *grad.shape[1:]))
            dist.reduce_scatter_single(out, grad.contiguous())
            return out

    return AllGather


def cross_device_setup():
    """How this step is distributed: `("ring", mesh, axis_name)` for a JAX
    `keras.distribution` whose data axis spans several devices,
    `("gathered", num_replicas)` inside a TensorFlow replica or torch process
    group of several, else `None`."""
    backend = keras.backend.backend()
    if backend == "jax":
        distribution = keras.distribution.distribution()
        axis = getattr(distribution, "batch_dim_name", None)
        if axis is None:
            return None
        mesh = distribution.device_mesh
        size = mesh.shape[list(mesh.axis_names).index(axis)]
        return ("ring", mesh.backend_mesh, axis) if size > 1 else None
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.distribute.in_cross_replica_context():
            return None
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        return ("gathered", replicas) if replicas > 1 else None
    if backend == "torch":
        import torch.distributed

        if torch.distributed.is_available() and torch.distributed.is_initialized():
            size = torch.distributed.get_world_size()
            return ("gathered", size) if size > 1 else None
    return None


def matching_pairs_sigmoid_loss(image_embeddings, text_embeddings, log_temperature, bias, chunk_size=None,
                                cross_device=False):
    """The sigmoid loss of matching pairs (image i with text i) from `(B, D)`
    L2-normalised embeddings, in whichever form this step needs: chunked
    (`chunk_size`), across devices (`cross_device`: the ring form on a JAX
    mesh, the gathered form across TensorFlow replicas or torch processes),
    or plain. Scaled so every form trains alike (Keras sums TensorFlow
    replicas' gradients; torch's DDP averages them)."""
    args = (image_embeddings, text_embeddings, log_temperature, bias)
    setup = cross_device_setup() if cross_device else None
    if setup is None:
        return sigmoid_loss_from_embeddings(*args) if chunk_size is None else chunked_sigmoid_loss(*args, chunk_size)
    if setup[0] == "ring":
        return ring_sigmoid_loss(*args, mesh=setup[1], axis_name=setup[2], chunk_size=chunk_size)
    loss = gathered_sigmoid_loss(*args, chunk_size=chunk_size)
    return loss / setup[1] if keras.backend.backend() == "tensorflow" else loss
