"""`python -m askmojo.healthcheck HOST:PORT [SERVICE]`: a container health
probe through grpc.health.v1.

HOST:PORT is parsed as METADATA_ADDRESS and VECTOR_SERVICE_ADDRESS are
(askmojo.common.targets): several comma-separated addresses are each
checked, and the probe passes only if every one is SERVING (one line, each
address's answer separated by "; "); a gRPC target (`dns:///...`) is asked
once, through whichever backend answers. A malformed address is a usage
error: one line, exit 2.

Exit 0 if and only if the server reports SERVING for SERVICE (default "",
the whole server), 1 otherwise: NOT_SERVING, an unknown service, no answer
within the deadline, or nothing listening. One line of output either way, so
`docker inspect` shows why a container is unhealthy. Both services flip their
status with real readiness (database migrated; model loaded and Chroma open),
so this says "ready", not merely "the port is open".
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from askmojo.common import tls
from askmojo.common.channels import NO_SECURITY, ClientSecurity, open_channel
from askmojo.common.targets import replica_addresses

DEFAULT_TIMEOUT = 3.0


def check(
    address: str,
    service: str = "",
    timeout: float = DEFAULT_TIMEOUT,
    security: ClientSecurity = NO_SECURITY,
) -> tuple[bool, str]:
    """(serving?, the line to print). The health service needs no key, but a
    TLS server needs its CA (and a client certificate under mTLS)."""
    target = f"{address} {service}" if service else address
    with open_channel(address, security) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            details = " ".join((exc.details() or "").split())
            if code == grpc.StatusCode.NOT_FOUND and not details:
                details = "the server does not know this service name"
            return False, f"{target}: {code.name}" + (f": {details}" if details else "")
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return response.status == health_pb2.HealthCheckResponse.SERVING, f"{target}: {status}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m askmojo.healthcheck",
        description="Exit 0 if the gRPC server at HOST:PORT reports SERVING, else 1.",
    )
    parser.add_argument(
        "address",
        metavar="HOST:PORT",
        help="one address, several comma-separated (each must be SERVING) or a gRPC target",
    )
    parser.add_argument("service", nargs="?", default="", help='default "": the whole server')
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds (default 3)"
    )
    parser.add_argument("--ca-file", help="PEM CA certificate to trust: connect with TLS")
    parser.add_argument("--cert-file", help="PEM client certificate (mTLS)")
    parser.add_argument("--key-file", help="PEM private key of --cert-file")
    args = parser.parse_args(argv)
    try:
        addresses = replica_addresses(args.address)
    except ValueError as exc:
        print(f"{parser.prog}: HOST:PORT {exc}", file=sys.stderr)
        return 2
    refusal = tls.client_refusal(
        args.ca_file,
        args.cert_file,
        args.key_file,
        names=("--ca-file", "--cert-file", "--key-file"),
    )
    if refusal is not None:  # still one line and exit 1: the probe's contract
        print(f"{args.address}: {refusal}")
        return 1
    security = ClientSecurity(
        ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file
    )
    try:
        answers = [check(a, args.service, args.timeout, security) for a in addresses]
    except KeyboardInterrupt:
        return 130
    print("; ".join(line for _, line in answers))
    return 0 if all(serving for serving, _ in answers) else 1


if __name__ == "__main__":
    sys.exit(main())
