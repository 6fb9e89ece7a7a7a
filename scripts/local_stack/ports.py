"""Which ports a stack's servers use: the user's from BQ_*_PORT, the tests' derived from the
checkout and moved on while taken."""

from __future__ import annotations

import os
import socket

from local_stack.apis import stac_service, tiler_service
from local_stack.processes import owned_pid
from local_stack.s3 import moto_service
from local_stack.stacks import (
    HOST,
    PORT_VARIABLES,
    Ports,
    Service,
    ServicesError,
    Stack,
    checkout_hash,
)

USER_PORTS = {"moto": 9010, "stac-api": 8082, "tiler": 8084}
# The test stack's three consecutive ports: a slot of 20000-29999 picked from the checkout's
# hash, the next slots while one of its ports is taken. Below Linux's ephemeral range (32768+).
TEST_PORTS_FIRST = 20000
TEST_PORT_SLOTS = 3333
TEST_PORT_TRIES = 50


def port_from_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        port = int(raw)
    except ValueError:
        raise ServicesError(f"{name}={raw!r} is not a port number") from None
    if not 0 < port < 65536:
        raise ServicesError(f"{name}={port} is out of range 1..65535")
    return port


def services_on(stack: Stack, ports: Ports) -> tuple[Service, Service, Service]:
    s3_port, stac_port, tiler_port = ports
    return (
        moto_service(stack, s3_port),
        stac_service(stack, stac_port),
        tiler_service(stack, tiler_port),
    )


def stack_ports(stack: Stack) -> Ports:
    if stack.disposable:
        return test_stack_ports(stack)
    return (
        port_from_env(PORT_VARIABLES["moto"], USER_PORTS["moto"]),
        port_from_env(PORT_VARIABLES["stac-api"], USER_PORTS["stac-api"]),
        port_from_env(PORT_VARIABLES["tiler"], USER_PORTS["tiler"]),
    )


def test_port_candidates() -> list[Ports]:
    first_slot = int(checkout_hash(), 16)
    slots = ((first_slot + n) % TEST_PORT_SLOTS for n in range(TEST_PORT_TRIES))
    return [
        (
            TEST_PORTS_FIRST + 3 * slot,
            TEST_PORTS_FIRST + 3 * slot + 1,
            TEST_PORTS_FIRST + 3 * slot + 2,
        )
        for slot in slots
    ]


def test_stack_ports(stack: Stack) -> Ports:
    """The ports this stack's servers run on, else the first candidates all free."""
    candidates = test_port_candidates()
    for ports in candidates:
        if any(owned_pid(service) for service in services_on(stack, ports)):
            return ports
    for ports in candidates:
        if all(port_is_free(port) for port in ports):
            return ports
    raise ServicesError(
        f"no three free ports among {len(candidates)} candidates in "
        f"{TEST_PORTS_FIRST}-{TEST_PORTS_FIRST + 3 * TEST_PORT_SLOTS - 1}"
    )


def port_is_free(port: int) -> bool:
    """Nothing listens on HOST:`port` (binding as the servers do, SO_REUSEADDR included)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True
