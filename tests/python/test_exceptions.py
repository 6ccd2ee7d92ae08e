"""Every exception class agentmesh defines is an AgentMeshError, defined in agentmesh.errors
(private ones aside), and still importable from the module that used to define it."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import agentmesh
from agentmesh import errors


def package_modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(agentmesh.__path__, "agentmesh.")]
    assert "agentmesh.hub_server" in names and "agentmesh.errors" in names
    return names


def defined_exceptions() -> list[type[BaseException]]:
    found = []
    for name in package_modules():
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if obj.__module__ == name and issubclass(obj, BaseException):
                found.append(obj)
    return found


def test_every_exception_the_package_defines_is_an_agentmesh_error():
    found = defined_exceptions()
    assert errors.StoreError in found and errors.ProtocolError in found
    outside = [
        f"{c.__module__}.{c.__qualname__}"
        for c in found
        if not issubclass(c, errors.AgentMeshError)
    ]
    assert outside == []


def test_public_exceptions_live_in_errors():
    public = [c for c in defined_exceptions() if not c.__name__.startswith("_")]
    assert {c.__module__ for c in public} == {"agentmesh.errors"}


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("agentmesh.hub_store", "StoreError"),
        ("agentmesh.hub_protocol", "ProtocolError"),
        ("agentmesh.hub_protocol", "HubRequestError"),
        ("agentmesh.hub_protocol", "PeerNotFoundError"),
        ("agentmesh.hub_client", "HubRequestError"),
        ("agentmesh.hub_client", "PeerNotFoundError"),
    ],
)
def test_old_import_paths_still_work(module, name):
    assert getattr(importlib.import_module(module), name) is getattr(errors, name)


def test_hub_request_error_keeps_its_codes():
    from agentmesh.hub_protocol import UNKNOWN_OP, ErrorCode

    err = errors.HubRequestError(ErrorCode.BAD_REQUEST, f"{UNKNOWN_OP} 99")
    assert err.code is ErrorCode.BAD_REQUEST and err.unknown_request
    assert not errors.HubRequestError(ErrorCode.BAD_REQUEST, "bad body").unknown_request
    assert errors.HubRequestError(250, "a newer hub's code").code == 250
    assert isinstance(errors.PeerNotFoundError(ErrorCode.PEER_NOT_FOUND, "x"), ValueError)
