"""Memory of the sigmoid loss (value and gradients) at a large batch: plain vs chunked vs ring.

    python -m benchmarks.loss_memory                  # B = 16384, D = 768
    python -m benchmarks.loss_memory --batch 32768

XLA's compile-time memory analysis (JAX, nothing is executed): the temporary
buffers of `jax.value_and_grad` of each form, per device. The plain form holds
B x B logits (and autodiff saves them for the backward pass); the chunked form
B x chunk; the ring form on 4 devices (virtual CPU devices here) holds
(B/4) x (B/4) blocks per device, or (B/4) x chunk with a chunk size. Writes `loss_memory.json`.
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 2**20


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loss_memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16384)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--chunks", type=int, nargs="+", default=[2048, 1024, 512])
    parser.add_argument("--out", default=os.path.join(HERE, "loss_memory.json"))
    args = parser.parse_args(argv)
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    import jax
    import jax.numpy as jnp
    import keras

    from keras_siglip.losses import chunked_sigmoid_loss, ring_sigmoid_loss, sigmoid_loss_from_embeddings

    batch, dim = args.batch, args.dim
    shapes = [jax.ShapeDtypeStruct((batch, dim), jnp.float32)] * 2 + [jax.ShapeDtypeStruct((1,), jnp.float32)] * 2

    def temp_mib(fn):
        compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3))).lower(*shapes).compile()
        return compiled.memory_analysis().temp_size_in_bytes / MIB

    rows = [("plain", None, temp_mib(sigmoid_loss_from_embeddings))]
    print(f"B = {batch}, D = {dim}: XLA temporary memory of value and gradients", flush=True)
    print(f"  plain          {rows[0][2]:9.0f} MiB", flush=True)
    for chunk in args.chunks:
        mib = temp_mib(lambda *a, c=chunk: chunked_sigmoid_loss(*a, chunk_size=c))
        rows.append((f"chunked {chunk}", chunk, mib))
        print(f"  chunked {chunk:<6} {mib:9.0f} MiB  ({mib / rows[0][2]:.1%} of plain)", flush=True)
    mesh = keras.distribution.DeviceMesh((4,), ["batch"], keras.distribution.list_devices()).backend_mesh
    # XLA analyses the partitioned program: the numbers are per device.
    for chunk in (None, *args.chunks[-1:]):
        mib = temp_mib(lambda *a, c=chunk: ring_sigmoid_loss(*a, mesh=mesh, axis_name="batch", chunk_size=c))
        label = "ring, 4 devices" + (f", chunk {chunk}" if chunk else "")
        rows.append((label, chunk, mib))
        print(f"  {label:<26} {mib:6.0f} MiB per device ({mib / rows[0][2]:.1%} of plain on one device)", flush=True)
    result = {"batch": batch, "dim": dim, "backend": "jax", "jax": jax.__version__,
              "rows": [{"form": form, "chunk": chunk, "temp_mib": mib, "fraction_of_plain": mib / rows[0][2]}
                       for form, chunk, mib in rows]}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {os.path.relpath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
