"""gclip.spark on a local Spark (local[2]: two executor threads, their Python workers separate
processes) over the committed fixtures, against the package and the gclip binary.

Needs pyspark, pandas, pyarrow and a Java runtime (tools/test_python.sh and .ci/run install
them); the test fails without them rather than skipping, so that CI runs it.
"""

import os
import sys

import numpy as np
import pytest

import gclip
import gclip.spark
from test_gclip import CLI_IMAGES, IMAGES, OC_ARCH, OC_MODEL, TEXTS, cli


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    # The workers run this interpreter, which has gclip installed.
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    # Loopback only: without this Spark picks the host's first non-loopback address for itself.
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
    session = (
        SparkSession.builder.master("local[2]")
        .appName("gclip-test")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def test_images_equal_the_cli_and_bad_rows_are_reported(spark, tmp_path):
    paths = [str(IMAGES / f) for f in CLI_IMAGES]
    missing = str(tmp_path / "missing.jpg")
    rows = [(i, p) for i, p in enumerate(paths)] + [(len(paths), missing), (len(paths) + 1, None)]
    df = spark.createDataFrame(rows, "id long, path string").repartition(2)
    out = gclip.spark.embed(df, "path", model=OC_MODEL, arch=OC_ARCH, batch_size=1)
    assert out.columns == ["id", "path", "embedding", "embedding_error"]
    got = {r["id"]: r for r in out.collect()}
    assert len(got) == len(rows)
    # One image per forward pass on both sides: bit-identical whatever the partitions hold.
    npy = tmp_path / "cli.npy"
    cli("embed", "image", "--model", OC_MODEL, "--arch", OC_ARCH, "--batch-size", "1",
        *paths, "--output", str(npy))
    want = np.load(npy)
    for i in range(len(paths)):
        assert got[i]["embedding_error"] is None
        assert np.array_equal(np.asarray(got[i]["embedding"], np.float32), want[i]), paths[i]
    assert got[len(paths)]["embedding"] is None and missing in got[len(paths)]["embedding_error"]
    assert got[len(paths) + 1]["embedding"] is None
    assert "not an image" in got[len(paths) + 1]["embedding_error"]


def test_texts_and_binary_images_in_batches(spark):
    model = gclip.load(OC_MODEL, arch=OC_ARCH, batch_size=8)
    df = spark.createDataFrame([(i, t) for i, t in enumerate(TEXTS)], "id long, caption string")
    out = gclip.spark.embed(df.coalesce(1), "caption", model=OC_MODEL, arch=OC_ARCH,
                            kind="text", batch_size=8, error_column=None)
    assert out.columns == ["id", "caption", "embedding"]
    got = np.array([r["embedding"] for r in out.orderBy("id").collect()], np.float32)
    # One partition, one Arrow batch: the same batches as one encode_text call.
    assert np.array_equal(got, model.encode_text(TEXTS))
    # Encoded images in a binary column.
    files = CLI_IMAGES[:6]
    data = [(i, bytearray((IMAGES / f).read_bytes())) for i, f in enumerate(files)]
    df = spark.createDataFrame(data, "id long, image binary").coalesce(1)
    out = gclip.spark.embed(df, "image", model=OC_MODEL, arch=OC_ARCH, batch_size=8,
                            output_column="vec")
    got = np.array([r["vec"] for r in out.orderBy("id").collect()], np.float32)
    assert np.array_equal(got, model.encode_image([str(IMAGES / f) for f in files]))


def test_arguments_are_checked_before_the_job(spark):
    df = spark.createDataFrame([(1, "a")], "id long, t string")
    with pytest.raises(ValueError, match="no column"):
        gclip.spark.embed(df, "nope", model=OC_MODEL, arch=OC_ARCH)
    with pytest.raises(ValueError, match="kind"):
        gclip.spark.embed(df, "t", model=OC_MODEL, arch=OC_ARCH, kind="audio")
    with pytest.raises(ValueError, match="already"):
        gclip.spark.embed(df, "t", model=OC_MODEL, arch=OC_ARCH, output_column="id")
