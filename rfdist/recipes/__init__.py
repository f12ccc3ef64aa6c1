"""Orchestrations that join the layers below: ``train`` (Ray Train), ``sweep`` (Ray Tune),
``score``, ``evaluate``, ``local`` (one process), ``submit`` (Ray Jobs) and their ``preflight``."""
