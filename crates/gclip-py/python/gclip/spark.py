"""Embedding a Spark DataFrame's column with gclip, on every executor at once.

    >>> import gclip.spark
    >>> df = spark.read.parquet("photos.parquet")              # a column of image paths
    >>> out = gclip.spark.embed(df, "image_path", model="openai/clip-vit-base-patch32")
    >>> out.select("image_path", "embedding").write.parquet("embeddings.parquet")

The rows travel to Python as Arrow batches (``mapInPandas``). Each executor's Python worker
loads the model once and keeps it for every batch and task it runs after (a module-level cache
keyed by the model and its options), so a job pays one load per worker, not per batch.

The model must be reachable on every executor: a path on storage they share, a directory
shipped with the job, or a Hugging Face id (downloaded into each executor's Hugging Face cache
on first use; set ``HF_HUB_OFFLINE=1`` with a cache laid out in advance on machines that have no
internet). The package's README has a ``spark-submit`` recipe.
"""

from __future__ import annotations

import threading
from typing import Any, Iterator, Optional

import numpy as np

from . import DEFAULT_MODEL, GclipError, Model, _gclip, load

__all__ = ["embed"]

# Models loaded in this process, by (model, arch, precision, batch_size): what one executor
# worker keeps between the batches and tasks it runs.
_MODELS: dict = {}
_MODELS_LOCK = threading.Lock()


def _cached_model(
    model: str, arch: Optional[str], precision: str, batch_size: int, threads: Optional[int]
) -> Model:
    key = (model, arch, precision, batch_size)
    with _MODELS_LOCK:
        cached = _MODELS.get(key)
        if cached is None:
            if threads is not None:
                try:
                    _gclip.set_threads(threads)
                except GclipError:
                    # A model loaded earlier in this worker fixed the thread count already.
                    pass
            cached = load(model, arch=arch, precision=precision, batch_size=batch_size)
            _MODELS[key] = cached
        return cached


def _task_cpus() -> Optional[int]:
    """The cores Spark gives each task (``spark.task.cpus``), when running in a task."""
    try:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        return None if ctx is None else int(ctx.cpus())
    except Exception:  # an older pyspark without TaskContext.cpus, or outside a task
        return None


def _embed_values(model: Model, values: list, kind: str, normalize: bool):
    """Vectors (None for items that failed) and errors (None for items that did not)."""
    vectors: list = [None] * len(values)
    errors: list = [None] * len(values)
    if kind == "text":
        good = [i for i, v in enumerate(values) if isinstance(v, str)]
        for i, v in enumerate(values):
            if not isinstance(v, str):
                errors[i] = f"{type(v).__name__} is not a text"
        if good:
            rows = model.encode_text([values[i] for i in good], normalize=normalize)
            for row, i in zip(rows, good):
                vectors[i] = row
    else:
        rows, failed = model.encode_image(values, normalize=normalize, errors="return")
        for i, message in failed:
            errors[i] = message
        for i, row in enumerate(rows):
            if errors[i] is None:
                vectors[i] = row
    return vectors, errors


def embed(
    df: Any,
    column: str,
    model: str = DEFAULT_MODEL,
    kind: str = "image",
    batch_size: int = 32,
    arch: Optional[str] = None,
    precision: str = "fp32",
    normalize: bool = True,
    output_column: str = "embedding",
    error_column: Optional[str] = "embedding_error",
    threads: Optional[int] = None,
) -> Any:
    """Returns ``df`` with an ``output_column`` of embeddings (``array<float>``) of
    ``column``, computed on the executors.

    ``kind="image"``: the column holds image paths (strings, readable on the executors) or
    encoded images (binary); ``kind="text"``: texts. ``model``, ``arch`` and ``precision`` as
    in :func:`gclip.load`; ``batch_size`` items per forward pass. Vectors are the ones
    :meth:`gclip.Model.encode_image` / ``encode_text`` give for the same batches: with
    ``batch_size=1`` bit-identical to any other run.

    A row whose item cannot be embedded (a missing file, a null) gets a null embedding and
    gclip's message in ``error_column`` (null for the rows that succeeded); the other rows
    proceed. ``error_column=None`` leaves that column out. ``threads``: CPU threads per
    executor worker (default: ``spark.task.cpus``, so that the workers of one machine share
    its cores rather than each taking them all).
    """
    from pyspark.sql.types import ArrayType, FloatType, StringType, StructField, StructType

    if kind not in ("image", "text"):
        raise ValueError(f'kind must be "image" or "text", not {kind!r}')
    if column not in df.columns:
        raise ValueError(f"no column {column!r} in the DataFrame (columns: {df.columns})")
    added = [output_column] + ([error_column] if error_column is not None else [])
    for name in added:
        if name in df.columns:
            raise ValueError(f"the DataFrame has a column {name!r} already; pick another name")
    if len(set(added)) != len(added):
        raise ValueError("output_column and error_column must differ")
    if not 1 <= batch_size <= 4096:
        raise ValueError(f"batch_size must be between 1 and 4096, not {batch_size}")
    fields = [StructField(output_column, ArrayType(FloatType(), containsNull=False), True)]
    if error_column is not None:
        fields.append(StructField(error_column, StringType(), True))
    schema = StructType(df.schema.fields + fields)

    def embed_batches(batches: Iterator[Any]) -> Iterator[Any]:
        m = _cached_model(model, arch, precision, batch_size, threads or _task_cpus())
        for pdf in batches:
            values = [None if _is_null(v) else v for v in pdf[column].tolist()]
            vectors, errors = _embed_values(m, values, kind, normalize)
            pdf[output_column] = vectors
            if error_column is not None:
                pdf[error_column] = errors
            yield pdf

    return df.mapInPandas(embed_batches, schema)


def _is_null(value: Any) -> bool:
    # pandas hands nulls over as None, or as NaN in an object column.
    return value is None or (isinstance(value, float) and np.isnan(value))
