"""Train the tutorial's Fashion-MNIST autoencoder across processes with Keras' fit.

Start one process per worker, each with the same cluster and its own index (``TF_CONFIG``
is TensorFlow's standard description of the cluster; ``--cluster``/``--index`` write it):

    python examples/multi_worker.py --cluster 127.0.0.1:23456,127.0.0.1:23457 --index 0 \\
        --run-dir runs/multi &
    python examples/multi_worker.py --cluster 127.0.0.1:23456,127.0.0.1:23457 --index 1 \\
        --run-dir runs/multi

Every worker builds and compiles the model inside ``MultiWorkerMirroredStrategy``'s scope
and calls ``pyae.train.fit`` on one ``tf.data`` pipeline batched at the global batch size;
tf.distribute shards it by data, so each worker trains on its share of every batch and the
gradients are all-reduced. Worker 0 is the chief: it keeps the run folder (checkpoints,
``loss.csv``, TensorBoard). Kill any worker and restart them all with the same command:
training resumes from the last complete epoch.
"""
import argparse
import json
import os
import sys


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--cluster", help="host:port of every worker, comma-separated "
                        "(default: the TF_CONFIG environment variable)")
    parser.add_argument("--index", type=int, default=0, help="this worker's index")
    parser.add_argument("--run-dir", required=True, help="the run folder (shared by all)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128, help="global batch size")
    parser.add_argument("--limit", type=int, help="train on the first N images only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default="adam",
                        help="adam: the tutorial's Adam(5e-4); sgd: SGD(0.5)")
    return parser.parse_args(argv)


def set_cluster(cluster, index):
    """TF_CONFIG for this worker; it must be set before TensorFlow starts its runtime."""
    if cluster:
        workers = cluster.split(",")
        os.environ["TF_CONFIG"] = json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
    elif "TF_CONFIG" not in os.environ:
        sys.exit("multi_worker.py: give --cluster or set TF_CONFIG")


def sharded_dataset(images, batch_size, seed):
    """One pipeline for all workers at the global batch size, sharded by data."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    dataset = tf.data.Dataset.from_tensor_slices(images)
    dataset = dataset.shuffle(len(images), seed=seed).batch(batch_size)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def main(argv=None, callbacks=()):
    arguments = parse_arguments(argv)
    set_cluster(arguments.cluster, arguments.index)
    import keras  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from pyae import data, models, train  # pylint: disable=import-outside-toplevel

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    images = data.load_dataset("digits", seed=arguments.seed).x_train[:arguments.limit]
    with strategy.scope():
        keras.utils.set_random_seed(arguments.seed)
        model = models.build("fashion_mnist")
        optimizer = (keras.optimizers.SGD(0.5) if arguments.optimizer == "sgd"
                     else train.default_optimizer())
        model.compile(optimizer, seed=arguments.seed)
    history = train.fit(model, sharded_dataset(images, arguments.batch_size, arguments.seed),
                        epochs=arguments.epochs, run_dir=arguments.run_dir,
                        callbacks=list(callbacks), verbose=2)
    return model, history


if __name__ == "__main__":
    main()
