"""`fit` for our models: one trace of the train step on TensorFlow; tasks shuffle in-memory data."""

import keras


def build_optimizer_before_tracing(model):
    """Create `model`'s optimizer variables now, if `fit` on TensorFlow would
    create them inside its first trace.

    Keras' TensorFlow trainer builds the optimizer lazily, inside the traced
    train step (unless a `tf.distribute` strategy is set). A `tf.function` that
    creates variables in its first trace is traced a second time, so the first
    `fit` of a model traces its whole train step twice: 4-5 s of a tiny SigLIP's
    9 s first step on a 2-core CPU. Building it here, on the model's trainable
    variables, is what Keras does before the first step on JAX and torch.
    A model whose layers are not all built is left to Keras (its variables do
    not exist yet)."""
    optimizer = getattr(model, "optimizer", None)
    if (
        keras.config.backend() != "tensorflow"
        or optimizer is None
        or optimizer.built
        or getattr(model, "_distribute_strategy", None) is not None
        or not all(layer.built for layer in model._flatten_layers())
    ):
        return
    optimizer.build(model.trainable_variables)


class BuildOptimizerBeforeFitMixin:
    """`fit` builds the optimizer first (see `build_optimizer_before_tracing`).

    Put it right before the Keras model class in the bases, so the other
    mixins' `fit` (input checks, training stages) run first."""

    def fit(self, *args, **kwargs):
        build_optimizer_before_tracing(self)
        return super().fit(*args, **kwargs)


def in_memory_batches(data, batch_size, shuffle):
    """A `tf.data.Dataset` of batches of `batch_size` rows of in-memory `data`
    (a structure of arrays or lists with rows along the first axis).

    With `shuffle` the rows come in a new random order every epoch (what
    `keras.Model.fit` does with arrays), else in order. When the rows split
    into whole batches, every batch has a static size. Rows are gathered by
    index, so the data is held once. Returns None for data that is not a
    structure of equal-length rectangular arrays (keras-hub batches or rejects
    it as before)."""
    import tensorflow as tf

    try:
        tensors = _map_rows(_to_tensor, data)
    except (TypeError, ValueError):
        return None
    columns = []
    _map_rows(columns.append, tensors)
    lengths = {int(t.shape[0]) if t.shape.rank else None for t in columns}
    if len(lengths) != 1 or None in lengths or 0 in lengths:
        return None
    count = lengths.pop()
    indices = tf.data.Dataset.range(count)
    if shuffle:
        indices = indices.shuffle(count, reshuffle_each_iteration=True)
    batches = indices.batch(batch_size, drop_remainder=count % batch_size == 0)
    return batches.map(lambda rows: _map_rows(lambda t: tf.gather(t, rows), tensors))


def _to_tensor(value):
    import tensorflow as tf

    if isinstance(value, tf.Tensor):
        return value
    if hasattr(value, "__array__"):
        value = keras.ops.convert_to_numpy(value)
    return tf.convert_to_tensor(value)


def _map_rows(fn, data):
    """`fn` over the row containers of `data`: arrays, tensors and lists (a list
    is one column of rows, as in `tf.data`) inside dicts and tuples."""
    if isinstance(data, dict):
        return {key: _map_rows(fn, value) for key, value in data.items()}
    if isinstance(data, tuple):
        return tuple(_map_rows(fn, value) for value in data)
    return None if data is None else fn(data)


def _is_in_memory(x):
    """Arrays, tensors or lists (possibly in a dict / tuple): not a dataset or generator."""
    columns = []
    _map_rows(columns.append, x)
    return bool(columns) and all(hasattr(c, "shape") or isinstance(c, list) for c in columns)


def _split_last(data, fraction):
    """`(train, validation)`: the last `fraction` of the rows validates, as in
    `keras.Model.fit(validation_split=...)` (taken before any shuffling)."""
    columns = []
    _map_rows(columns.append, data)
    count = len(columns[0])
    cut = count - int(count * fraction)
    if cut in (0, count):
        raise ValueError(f"validation_split={fraction} of {count} examples leaves no training or no "
                         "validation examples.")
    return _map_rows(lambda v: v[:cut], data), _map_rows(lambda v: v[cut:], data)


class ShuffledArraysMixin:
    """A task's `fit` on in-memory data reshuffles it every epoch, as
    `keras.Model.fit` does (`shuffle=True` by default).

    keras-hub's `Task.fit` batches arrays in order and ignores `shuffle` (with
    a warning), so every epoch would repeat the same batches: data sorted by
    class or task would train on one kind at a time. Here in-memory data is
    batched (see `in_memory_batches`) before `Task.fit` maps the preprocessor
    over it. `validation_split` takes the last rows, before shuffling, as in
    Keras. Put it before `BuildOptimizerBeforeFitMixin` in the bases."""

    def fit(self, x=None, y=None, batch_size=None, sample_weight=None, shuffle=True, validation_split=None,
            validation_data=None, **kwargs):
        if _is_in_memory(x):
            data = (x, y, sample_weight)
            if validation_split and validation_data is None:
                data, validation_data = _split_last(data, validation_split)
                validation_split = None
            batches = in_memory_batches(keras.utils.pack_x_y_sample_weight(*data), batch_size or 32, shuffle)
            if batches is not None:
                x, y, sample_weight, batch_size, shuffle = batches, None, None, None, False
            else:
                x, y, sample_weight = data
        return super().fit(x, y, batch_size=batch_size, sample_weight=sample_weight, shuffle=shuffle,
                           validation_split=validation_split, validation_data=validation_data, **kwargs)
