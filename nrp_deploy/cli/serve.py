"""``nrp serve``: a purifier behind the bundled Triton server."""

from __future__ import annotations

import argparse
import sys

from nrp_deploy.cli.common import add_runtime_options, add_serving_options, dynamic_defense


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a purifier behind NVIDIA Triton Inference Server (HTTP, gRPC, metrics)",
        description="Run the Triton Inference Server bundled with nvidia-pytriton over a purifier of any "
        "backend: uint8 images [N, H, W, 3] in, purified uint8 images out, requests of one image size joined "
        "by Triton's dynamic batcher. Request parameters: dynamic (true/false), seed, start_index; the dynamic "
        "defence's noise level is the server's (--noise-sigma, --noise-eps). Health at "
        "/v2/health/ready, Prometheus metrics on the metrics port. SIGINT/SIGTERM shut it down cleanly: "
        "requests in flight finish. Needs the `serve` extra (numpy<2: its own environment).",
    )
    p.add_argument(
        "--model",
        default="default",
        help="registry name (default, NRP, NRP_resG), checkpoint, .onnx (with its .json) or TensorRT engine",
    )
    add_runtime_options(p)
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: the GPU when the backend can)")
    p.add_argument("--threads", type=int, default=None, help="intra-op CPU threads per model instance")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, loopback)")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP/REST port (default: 8000)")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default: 8001)")
    p.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port (default: 8002)")
    add_serving_options(p)
    p.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from nrp_deploy.serving import Endpoints, ServeSettings, serve
    from nrp_deploy.serving.model_config import Batching

    noise = dynamic_defense(args)
    settings = ServeSettings(
        model=args.model,
        backend=args.backend,
        precision=args.precision,
        device=args.device,
        threads=args.threads,
        dynamic=args.dynamic,
        noise_sigma=noise.sigma,
        noise_eps=noise.eps,
        **({"max_pixels": args.max_pixels} if args.max_pixels else {}),
    )
    endpoints = Endpoints(args.host, args.http_port, args.grpc_port, args.metrics_port)

    def announce(e: Endpoints) -> None:
        print(
            f"serving {settings.model} as model 'nrp_purifier': HTTP {e.http_url}, gRPC {e.grpc_url}, "
            f"metrics {e.metrics_url} (SIGINT/SIGTERM to stop)",
            file=sys.stderr,
            flush=True,
        )

    batching = Batching(args.max_batch, args.max_queue_delay_us)
    return serve(settings, endpoints, batching, instances=args.instances, on_ready=announce)
