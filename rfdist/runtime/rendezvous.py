"""torch.distributed rendezvous on 127.0.0.1 for a Ray Train run on this machine only.

Ray Train's default (``TorchConfig``, ``init_method="env"``) makes rank 0 host the c10d
``TCPStore``, which listens on every interface whatever host it is given (torch ignores it;
pytorch/pytorch issue 173909) — an unauthenticated key-value server open to the network
during a local run. :class:`LoopbackTorchConfig` takes over the process-group setup when the
workers' Ray node address is a loopback one (a local Ray started by rfdist, or any cluster
whose nodes all run here): rank 0 binds a socket to 127.0.0.1 itself and hands its file
descriptor to ``TCPStore(master_listen_fd=...)``, the other ranks connect to it as clients,
and every rank calls ``init_process_group(store=...)``; Gloo/NCCL are pointed at ``lo``.
On a real multi-node cluster (a routable node address) it defers to Ray's own backend.

The hook is Ray Train's backend API (``TorchTrainer(torch_config=...)``; ``BackendConfig`` and
``Backend`` are Ray DeveloperAPIs); Ray's default backend is reached through the public
``TorchConfig().backend_cls``, so nothing here imports Ray internals.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ray.train.backend import Backend
from ray.train.torch import TorchConfig

__all__ = ["LoopbackTorchConfig", "is_loopback"]

LOOPBACK = "127.0.0.1"

# rank 0's store and its listening socket live as long as the worker process's process group
_STORE: dict[str, Any] = {}


def is_loopback(address: str) -> bool:
    """Whether ``address`` (an IP, or ``localhost``) names this machine only."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _node_address() -> str:
    import ray.util

    return ray.util.get_node_ip_address()


def _serve_store(world_size: int, timeout_s: float) -> int:
    """On rank 0: a TCPStore listening on 127.0.0.1 only; returns its port."""
    import torch.distributed as dist

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((LOOPBACK, 0))
    listener.listen(max(world_size, 16))
    port = listener.getsockname()[1]
    _STORE["socket"] = listener  # keep the descriptor open: the store serves on it
    _STORE["store"] = dist.TCPStore(
        LOOPBACK,
        port,
        world_size,
        is_master=True,
        timeout=timedelta(seconds=timeout_s),
        wait_for_workers=False,
        master_listen_fd=listener.fileno(),
    )
    return port


def _join(rank: int, world_size: int, port: int, backend: str, timeout_s: float) -> None:
    """On every rank: the process group over the loopback store; torch env vars as Ray sets them."""
    import ray.train
    import torch.distributed as dist

    context = ray.train.get_context()
    os.environ.update(
        {
            "LOCAL_RANK": str(context.get_local_rank()),
            "LOCAL_WORLD_SIZE": str(context.get_local_world_size()),
            "NODE_RANK": str(context.get_node_rank()),
            "RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "MASTER_ADDR": LOOPBACK,
            "MASTER_PORT": str(port),
        }
    )
    # the collectives' own sockets: on the loopback interface too (unless the user chose one)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
    if rank == 0:
        store = _STORE["store"]
    else:
        store = dist.TCPStore(
            LOOPBACK, port, world_size, is_master=False, timeout=timedelta(seconds=timeout_s)
        )
    dist.init_process_group(
        backend=backend,
        store=store,
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=timeout_s),
    )


class _LoopbackTorchBackend(Backend):
    """Ray's torch backend, except that a loopback-only run rendezvouses on 127.0.0.1."""

    share_cuda_visible_devices: bool = True

    @staticmethod
    def _ray_default() -> Backend:
        return TorchConfig().backend_cls()

    def on_start(self, worker_group: Any, backend_config: Any) -> None:
        if not is_loopback(worker_group.execute_single(0, _node_address)):
            self._ray_default().on_start(worker_group, backend_config)
            return
        backend = backend_config.backend or (
            "nccl" if worker_group.get_resources_per_worker().get("GPU", 0) > 0 else "gloo"
        )
        world = len(worker_group)
        port = worker_group.execute_single(0, _serve_store, world, backend_config.timeout_s)
        import ray

        ray.get(
            [
                worker_group.execute_single_async(
                    rank, _join, rank, world, port, backend, backend_config.timeout_s
                )
                for rank in range(world)
            ]
        )

    def on_shutdown(self, worker_group: Any, backend_config: Any) -> None:
        # destroys the process group; the store goes with rank 0's worker process
        self._ray_default().on_shutdown(worker_group, backend_config)

    def on_training_start(self, worker_group: Any, backend_config: Any) -> None:
        self._ray_default().on_training_start(worker_group, backend_config)


@dataclass
class LoopbackTorchConfig(TorchConfig):
    """``TorchConfig`` whose rendezvous stays on 127.0.0.1 when every worker runs here."""

    @property
    def backend_cls(self):
        return _LoopbackTorchBackend
