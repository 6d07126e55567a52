"""The registry of servers: a new server is one subpackage with a `SERVER` (the `Server` protocol of
lab2prod.servers.base) and one line here."""

from __future__ import annotations

from lab2prod.core.errors import Lab2ProdError
from lab2prod.servers.base import Server
from lab2prod.servers.litserve.adapter import SERVER as LITSERVE
from lab2prod.servers.rayserve.adapter import SERVER as RAYSERVE
from lab2prod.servers.torchserve.adapter import SERVER as TORCHSERVE

__all__ = ["SERVERS", "ALIASES", "servers_named", "stop_recorded"]

SERVERS: dict[str, Server] = {server.name: server for server in (TORCHSERVE, RAYSERVE, LITSERVE)}

# Names that stand for several servers.
ALIASES = {"both": ("torchserve", "rayserve"), "all": tuple(SERVERS)}


def servers_named(names: str | list[str] | tuple[str, ...]) -> list[Server]:
    """The registered servers a `backends` value names: a list of names or aliases ("both"), or the same as one
    comma-separated string; a clear error for a name that is not registered."""
    items = names.split(",") if isinstance(names, str) else list(names)
    out: list[Server] = []
    for item in (i.strip() for i in items if i.strip()):
        for name in ALIASES.get(item, (item,)):
            if name not in SERVERS:
                raise Lab2ProdError(f"server {item!r} in backends is not registered; use any of "
                                    f"{', '.join([*SERVERS, *ALIASES])}, e.g. -p backends=torchserve,rayserve")
            if SERVERS[name] not in out:
                out.append(SERVERS[name])
    if not out:
        raise Lab2ProdError("backends names no server; e.g. -p backends=torchserve or -p backends=both")
    return out


def stop_recorded(run_dir) -> bool:
    """Stop what any server of a crashed run left behind; True if there was something."""
    return any([server.stop_recorded(run_dir) for server in SERVERS.values()])
