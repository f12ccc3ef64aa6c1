"""Ray only: the private local cluster, the loopback rendezvous, the worker loop's state,
epochs over Ray datasets, checkpoints and the console."""
