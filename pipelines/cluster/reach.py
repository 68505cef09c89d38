"""What workers on other machines cannot reach, refused in one line before anything is submitted: a file
storage or tracking store on this machine, a loopback address, a password on a command line."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlparse

from pipelines.errors import ConfigError, without_password

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def this_machine() -> set[str]:
    """This machine's names and addresses, as an engine may list a node."""
    names = {socket.gethostname(), socket.getfqdn(), socket.gethostname().split(".")[0], *LOOPBACK_NAMES}
    for name in list(names):
        try:
            names.update(socket.gethostbyname_ex(name)[2])
        except OSError:
            continue
    return names


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def other_machines(node_hosts: set[str]) -> list[str]:
    """The engine's nodes that are not this machine (by name or address)."""
    ours = this_machine()
    return sorted(h for h in node_hosts if h and h not in ours and not is_loopback(h))


def refuse_unreachable(engine: str, node_hosts: set[str], storage: str, tracking_uri: str) -> None:
    """Refuse what the engine's other machines could not reach (a single-machine engine may use anything);
    on any engine, a password written into a URL, which would reach every worker's command line."""
    for what, url in (("storage", storage), ("tracking URI", tracking_uri)):
        if urlparse(url).password:
            raise ConfigError(f"cluster={engine}: the {what} {without_password(url)} holds a password, which would be "
                              "written into every worker's command line: keep it in ~/.pgpass or PGPASSWORD "
                              "(PostgreSQL) or MLflow's credentials file, on each node")
    others = other_machines(node_hosts)
    if not others:
        return
    more = f" and {len(others) - 1} other node(s)" if others[1:] else ""
    where = f"cluster={engine}: workers on {others[0]}{more}"
    if storage.startswith(("sqlite:", "journal:")) or "://" not in storage:
        raise ConfigError(f"{where} cannot reach the storage {storage} (a file on this machine): use a database "
                          "server they reach, --storage postgresql+psycopg2://<host>/<db>")
    if tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri:
        raise ConfigError(f"{where} cannot reach the tracking store {tracking_uri} (on this machine): start an "
                          "`mlflow server` they reach and set MLFLOW_TRACKING_URI=http://<host>:<port>")
    for what, url in (("storage", storage), ("tracking server", tracking_uri)):
        host = urlparse(url).hostname or ""
        if is_loopback(host):
            raise ConfigError(f"{where} cannot reach the {what} at {without_password(url)} (a loopback address): "
                              "give its host name or address on the network")
