"""How the master sets up the subscription side of an instance from its configuration.

The router side (a server that keeps the node table and publishes it to the router workers) and the instance
side (an announcer); both are master services.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

from uwsgirouter.config import Config
from uwsgirouter.subscription.client import Subscriber, parse_subscribe2, parse_subscribe_to
from uwsgirouter.subscription.image import TableImage
from uwsgirouter.subscription.server import IMAGE_BYTES_PER_KEY, IMAGE_BYTES_PER_NODE, SubscriptionServer
from uwsgirouter.subscription.table import NodeTable

if TYPE_CHECKING:
    from uwsgirouter.sockets import Sockets
    from uwsgirouter.subscription.signing import SubscriptionGuard

log = logging.getLogger("uwsgirouter.master")


def start_subscription_server(config: Config, sockets: Sockets) -> tuple[SubscriptionServer, TableImage, socket.socket]:
    """The master's subscription server over ``sockets.subscription``, the shared-memory image it publishes, and
    the socket on which router workers report failed nodes and used keys."""
    table = NodeTable(config.subscription_max_nodes, config.subscription_max_keys, config.subscription_tolerance)
    capacity = config.subscription_max_nodes * IMAGE_BYTES_PER_NODE + config.subscription_max_keys * IMAGE_BYTES_PER_KEY
    image = TableImage(capacity)
    reports, report_worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    reports.setblocking(False)
    report_worker.setblocking(False)
    own = sockets.router[0].name.encode() if sockets.router else b""
    server = SubscriptionServer(
        sockets.subscription,
        table,
        image,
        reports,
        resubscribe=config.fastrouter_resubscribe,
        resubscribe_bind=config.fastrouter_resubscribe_bind,
        own_address=own,
        guard=subscription_guard(config, sockets.subscription),
    )
    return server, image, report_worker


def make_subscriber(config: Config, sockets: Sockets, apps: int) -> Subscriber | None:
    """The announcer of ``--subscribe-to``/``--subscribe2``, None when the instance subscribes nowhere."""
    names = sockets.app_names
    default = names[0] if names else None
    targets = [t for spec in config.subscribe_to for t in parse_subscribe_to(spec, default, sockets.shared_names)]
    targets += [t for items in config.subscribe2 for t in parse_subscribe2(items, names, default)]
    if not targets:
        return None
    weight = apps if config.auto_weight else config.weight
    for target in targets:
        log.info("subscribing %s to %s as %s", target.key, target.server, target.address)
    return Subscriber(
        targets,
        frequency=float(config.subscribe_freq),
        cores=apps,
        weight=weight,
        force_modifier1=config.subscribe_with_modifier1,
        blocked=config.start_unsubscribed,
        notify=str(config.subscription_notify_socket) if config.subscription_notify_socket else None,
        unsubscribe_on_reload=config.unsubscribe_on_graceful_reload,
    )


def subscription_guard(config: Config, sockets: Sequence[socket.socket]) -> SubscriptionGuard | None:
    """Signature and credentials checks of the subscription server, when any is configured."""
    if not (
        config.subscriptions_sign_check
        or config.subscriptions_credentials_check
        or config.subscriptions_use_credentials
    ):
        return None
    from uwsgirouter.subscription import signing  # cryptography is loaded only when signing is used

    sign_check = None
    if config.subscriptions_sign_check:
        sign_check = signing.split_sign_spec(config.subscriptions_sign_check)
        if not os.path.isdir(sign_check[1]):
            log.warning(
                "--subscriptions-sign-check: %s is not a directory (yet); every packet is refused", sign_check[1]
            )
    if config.subscriptions_use_credentials:
        unix = [sock for sock in sockets if sock.family == socket.AF_UNIX]
        for sock in unix:
            signing.enable_credentials(sock)
        if not unix:
            log.warning("--subscriptions-use-credentials: no UNIX subscription server, so no credentials to read")
    elif config.subscriptions_credentials_check or config.subscriptions_sign_skip_uid:
        log.warning(
            "--subscriptions-credentials-check and --subscriptions-sign-skip-uid need --subscriptions-use-credentials"
        )
    return signing.SubscriptionGuard(
        sign_check=sign_check,
        tolerance=config.subscriptions_sign_check_tolerance,
        skip_uids=config.subscriptions_sign_skip_uid,
        credentials_dirs=config.subscriptions_credentials_check,
        use_credentials=config.subscriptions_use_credentials,
        max_counters=4 * config.subscription_max_nodes,
    )
