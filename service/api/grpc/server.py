"""Assembles the grpc.aio server: the service, health, reflection, auth, limits and TLS."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.api.auth import AuthInterceptor, KeyChecker
from service.api.grpc.limits import CallLimiter, CallLimits
from service.api.grpc.reflection_descriptors import reflection_pool
from service.api.grpc.servicer import SERVICE_NAME, GrpcApi, method_handlers
from service.lifecycle import Lifecycle
from service.settings import Settings

# Health name for liveness probes: SERVING while the process runs, whatever Triton's state, so a
# Triton outage makes pods unready (no traffic) without restarting the facade.
LIVENESS_NAME = "liveness"
# Trailing metadata (gRPC) and response header (HTTP) naming the worker process that answered (--workers N).
WORKER_PID_KEY = "x-worker-pid"


class WorkerPidInterceptor(grpc.aio.ServerInterceptor):
    """Adds `x-worker-pid` to the trailers of every unary call that returns normally (workers only)."""

    def __init__(self) -> None:
        self.pid = str(os.getpid())

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        behavior = handler.unary_unary
        pid = self.pid

        async def tagged(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            response = await behavior(request, context)
            context.set_trailing_metadata((*(context.trailing_metadata() or ()), (WORKER_PID_KEY, pid)))
            return response

        return handler._replace(unary_unary=tagged)  # type: ignore[attr-defined,no-any-return]


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    pair = [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())]
    if settings.tls_client_ca is not None:
        return grpc.ssl_server_credentials(
            pair, root_certificates=settings.tls_client_ca.read_bytes(), require_client_auth=True
        )
    return grpc.ssl_server_credentials(pair)


def call_limits(settings: Settings) -> CallLimits:
    """The server's call bounds (service/api/grpc/limits.py). API unary calls default to twice the in-flight
    capacity plus a margin: the calls refused by admission after their message arrived, and those being
    received, stay bounded."""
    return CallLimits(
        unary=settings.grpc_max_calls or 2 * settings.max_in_flight + 32,
        streams=settings.grpc_max_streams,
        per_connection=settings.grpc_max_streams_per_connection,
        probes=settings.grpc_max_probe_calls,
        idle_s=settings.grpc_idle_timeout_s,
    )


def build_grpc_server(
    lifecycle: Lifecycle, settings: Settings, worker: bool = False
) -> tuple[grpc.aio.Server, health.aio.HealthServicer, int]:
    """Returns the (not yet started) server, its health servicer and the bound port. A `worker` of
    `serve --workers N` shares the port with its siblings (SO_REUSEPORT); its parent has bound the port
    first without that option and holds it, so no other process can join (service/workers.py)."""
    state = lifecycle.state
    checker = KeyChecker(settings.all_api_keys(), settings.auth_exempt)
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if checker.enabled:
        interceptors.append(
            AuthInterceptor(
                checker,
                on_denied=lambda method: state.metrics.requests.labels(
                    "grpc", method.rsplit("/", 1)[-1], "UNAUTHENTICATED"
                ).inc(),
            )
        )
    options = [
        # Refused from the length prefix, before the message is buffered.
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        # Responses are bounded by max_batch_inputs x dimensions; the server never refuses its own.
        ("grpc.max_send_message_length", -1),
        # Off for a lone facade: with SO_REUSEPORT a second one on the same port would silently share its
        # traffic. On for workers, whose parent excludes every other process from the port.
        ("grpc.so_reuseport", 1 if worker else 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]
    # After auth (a refused key holds no place), before the worker tag (it wraps the unary handler that the
    # limiter then serves as a request stream). grpc's maximum_concurrent_rpcs is not used: it counts health
    # checks in the same pool as idle streams.
    interceptors.append(
        CallLimiter(
            call_limits(settings),
            SERVICE_NAME,
            self_timed=("EmbedStream",),
            on_refused=lambda method: state.metrics.requests.labels(
                "grpc", method.rsplit("/", 1)[-1], "RESOURCE_EXHAUSTED"
            ).inc(),
        )
    )
    if worker:
        interceptors.append(WorkerPidInterceptor())
    server = grpc.aio.server(interceptors=interceptors, options=options)
    api = GrpcApi(lifecycle, settings.stream_window, checker.pinned if checker.enabled else None)
    server.add_generic_rpc_handlers((method_handlers(api),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    # Served with json_name filled in, so grpcurl prints the same JSON through reflection as from the .proto.
    reflected = (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(reflected, server, pool=reflection_pool(reflected))
    address = f"{settings.host}:{settings.grpc_port}"
    creds = server_credentials(settings)
    port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    return server, health_servicer, port


async def set_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, status)
    await health_servicer.set(LIVENESS_NAME, health_pb2.HealthCheckResponse.SERVING)
