"""Online serving of a registered flow on Ray Serve (``rfdist serve MODEL_URI``).

The flow is rebuilt on the driver with the installed rfdist (:func:`rfdist.tracking.models.load_flow`:
digests checked, nothing from the artifact store executed) and its weights handed to the
replicas, which answer with the same ``predict`` as the MLflow model
(:class:`rfdist.tracking.pyfunc.RectangularFlowPyfunc`), so its input checks apply here too.

HTTP, on ``127.0.0.1`` unless told otherwise (anyone who reaches the port can query the model):

- ``POST /invocations`` with the MLflow server's request body, ``{"inputs": [[x0, …], …],
  "params": {"output": …, "space": …, "count": …, "seed": …}}`` (``dataframe_split`` /
  ``instances`` are read too); the answer is a JSON object labelled by the output,
  ``{"log_prob": [...]}`` (or ``reconstruction_error`` / ``latent`` / ``sample``).
- Bad input: HTTP 400 with one line, ``{"error": "…"}``; no stack trace.
- ``GET /ping``: 200 once the replicas are up.

Requests that use the default output (``log_prob`` in data space) are batched across callers
with ``@serve.batch`` (up to ``max_batch_size`` rows-lists per call, waiting at most
``batch_wait_s``); ``num_replicas`` replicas, or ``autoscaling`` (Ray Serve's
``autoscaling_config``: ``min_replicas``, ``max_replicas``, …) when given.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["APP_NAME", "ServeOptions", "deploy", "parse_request"]

APP_NAME = "rfdist"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class RequestError(ValueError):
    """A bad request body; its message is one line for the client."""


@dataclass
class ServeOptions:
    """Where and how a model is served (see module doc)."""

    host: str = "127.0.0.1"
    port: int = 8000
    num_replicas: int = 1
    autoscaling: dict[str, Any] | None = None
    max_batch_size: int = 32
    batch_wait_s: float = 0.01
    ray_actor_options: dict[str, Any] = field(default_factory=lambda: {"num_cpus": 1})


def parse_request(body: bytes) -> tuple[Any, dict[str, Any]]:
    """``(rows, params)`` from an MLflow-style JSON body; :class:`RequestError` when malformed."""
    try:
        payload = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"the request body is not JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise RequestError('expected a JSON object such as {"inputs": [[x0, x1, ...], ...]}')
    params = payload.get("params") or {}
    if not isinstance(params, dict):
        raise RequestError('"params" must be a JSON object')
    if "inputs" in payload:
        rows = payload["inputs"]
    elif "instances" in payload:
        rows = payload["instances"]
    elif isinstance(payload.get("dataframe_split"), dict):
        rows = payload["dataframe_split"].get("data")
    else:
        if params.get("output") == "sample":
            return [], params
        raise RequestError('expected "inputs" (rows of floats), "instances" or "dataframe_split"')
    if not isinstance(rows, list):
        raise RequestError('"inputs" must be a list of rows')
    return rows, params


def _pyfunc(spec: dict, state: dict, preprocess: dict | None) -> Any:
    """The MLflow model's Python class, holding a flow rebuilt with the installed rfdist."""
    import numpy as np

    from rfdist.core.builders import ModelSpec, build_model
    from rfdist.tracking.pyfunc import RectangularFlowPyfunc

    model = build_model(ModelSpec.from_dict(spec))
    model.load_state_dict(state)
    wrapper = RectangularFlowPyfunc()
    wrapper.model = model.eval()
    wrapper.preprocess = preprocess
    wrapper.data_dim = int(np.prod(wrapper.model.data_shape))
    return wrapper


def _refusals() -> tuple[type[Exception], ...]:
    """The exceptions that mean a bad request (HTTP 400): the pyfunc's ``predict`` refuses input
    with MLflow's ``MlflowException`` (what MLflow's own server answers with a 400)."""
    from mlflow.exceptions import MlflowException

    return (ValueError, TypeError, MlflowException)


def _deployment_class(options: ServeOptions) -> Any:
    """The Ray Serve deployment (built here: ``@serve.batch`` takes its sizes at definition)."""
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    @serve.deployment(name="RectangularFlow")
    class FlowDeployment:
        def __init__(self, spec: dict, state: dict, preprocess: dict | None) -> None:
            self.pyfunc = _pyfunc(spec, state, preprocess)

        def predict(self, rows: Any, params: dict[str, Any]) -> Any:
            return self.pyfunc.predict(None, rows, params)

        @serve.batch(max_batch_size=options.max_batch_size, batch_wait_timeout_s=options.batch_wait_s)
        async def batched(self, requests: list[Any]) -> list[Any]:
            """Default-output requests of several callers in one ``predict``; on a bad one, each alone."""
            import numpy as np

            from rfdist.tracking.pyfunc import rows_to_tensor

            try:
                tensors = [rows_to_tensor(rows, self.pyfunc.data_dim) for rows in requests]
                values = self.predict(np.concatenate([t.numpy() for t in tensors]), {})
                bounds = np.cumsum([0, *(len(t) for t in tensors)])
                return [values[a:b] for a, b in itertools.pairwise(bounds)]
            except _refusals():
                return [self._alone(rows) for rows in requests]

        def _alone(self, rows: Any) -> Any:
            try:
                return self.predict(rows, {})
            except _refusals() as exc:
                return exc

        async def __call__(self, request: Request) -> JSONResponse:
            if request.url.path.rstrip("/").endswith("/ping"):
                return JSONResponse({"status": "ok"})
            if request.method != "POST" or not request.url.path.rstrip("/").endswith("/invocations"):
                return JSONResponse({"error": "POST rows to /invocations"}, status_code=404)
            try:
                rows, params = parse_request(await request.body())
                output = params.get("output", "log_prob")
                if not params or params == {"output": "log_prob"}:
                    values = await self.batched(rows)
                    if isinstance(values, Exception):
                        raise values
                else:
                    values = self.predict(rows, params)
            except _refusals() as exc:
                return JSONResponse(
                    {"error": str(exc).splitlines()[0] or type(exc).__name__}, status_code=400
                )
            return JSONResponse({str(output): values.tolist()})

    return FlowDeployment


def deploy(
    model_uri: str, options: ServeOptions, *, tracking_uri: str | None = None, address: str | None = None
) -> str:
    """Deploy ``model_uri`` on Ray Serve; returns the ``/invocations`` URL.

    The model is loaded (and checked) before Ray starts; then this joins ``address`` (else
    ``RAY_ADDRESS``, else the Ray already initialised here, else a new local one).
    """
    from rfdist.runtime.cluster import connect_or_start_ray
    from rfdist.tracking.models import load_flow, resolve_tracking_uri

    loaded = load_flow(model_uri, tracking_uri=resolve_tracking_uri(tracking_uri))
    connect_or_start_ray(address, 4)
    from ray import serve

    state = {k: v.cpu() for k, v in loaded.model.state_dict().items()}
    serve.start(http_options={"host": options.host, "port": options.port})
    scale: dict[str, Any] = (
        {"autoscaling_config": options.autoscaling}
        if options.autoscaling
        else {"num_replicas": options.num_replicas}
    )
    deployment = _deployment_class(options).options(ray_actor_options=options.ray_actor_options, **scale)
    serve.run(
        deployment.bind(loaded.spec.to_dict(), state, loaded.preprocess),
        name=APP_NAME,
        route_prefix="/",
        blocking=False,
    )
    host = f"[{options.host}]" if ":" in options.host else options.host
    return f"http://{host}:{options.port}/invocations"
