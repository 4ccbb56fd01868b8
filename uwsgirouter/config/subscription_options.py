"""Options of the subscription system (both sides), the shared cache and the Python code run by the master."""

from __future__ import annotations

from uwsgirouter.address import Address
from uwsgirouter.config.converters import (
    ADDRESS,
    COUNT,
    KEYVAL_LIST,
    MODIFIER,
    NON_EMPTY,
    PATH,
    POSITIVE,
    SECONDS,
    choice,
)
from uwsgirouter.config.setting import Arg, Flag, Multi, Scalar


class SubscriptionServerOptions:
    GROUP = "Subscription server"

    subscription_tolerance = Scalar(
        POSITIVE,
        17,
        help="Seconds without an announce after which a node is dropped (checked on a timer, unlike uWSGI).",
    )
    subscription_algo = Scalar(
        choice("wrr", "lrc", "wlrc"),
        "wrr",
        help="How requests are spread over the nodes of one key: wrr (smooth weighted round robin, exact "
        "weights), lrc (least reference count), wlrc (lrc divided by weight).",
    )
    subscription_dotsplit = Flag(
        help="On a miss, retry with the key cut at the next dot (a.b.example.com -> .b.example.com -> ...).",
    )
    subscription_max_nodes = Scalar(
        POSITIVE, 4096, help="Capacity of the node table; new nodes beyond it are refused and logged."
    )
    subscription_max_keys = Scalar(
        POSITIVE, 1024, help="Capacity of the key table; new keys beyond it are refused and logged."
    )
    subscriptions_sign_check: Scalar[str | None] = Scalar(
        NON_EMPTY,
        None,
        planned=True,
        help="Accept only subscriptions signed with DIGEST, checked against DIR/<key>.pem (DIGEST:DIR).",
    )
    subscriptions_sign_check_tolerance = Scalar(
        SECONDS, 60, planned=True, help="Seconds of clock skew allowed in signed subscriptions."
    )
    subscriptions_sign_skip_uid = Multi(
        NON_EMPTY, planned=True, help="Skip the signature check for this uid (UNIX sockets with credentials)."
    )
    subscriptions_credentials_check = Multi(
        PATH, planned=True, help="Directory of per-key files whose owner must match the sender's credentials."
    )
    subscriptions_use_credentials = Flag(
        planned=True, help="Read SCM_CREDENTIALS (pid, uid, gid) on UNIX datagram subscription servers."
    )


class SubscriberOptions:
    GROUP = "Subscribing an instance"

    subscribe_to = Multi(
        NON_EMPTY,
        aliases=["st", "subscribe"],
        help="Announce this instance to a subscription server: [ADDR=]SERVER:KEY[,MODIFIER1[,SIGN]] or "
        "[ADDR=]SERVER:@MAPFILE. Repeatable.",
    )
    subscribe2 = Multi(
        KEYVAL_LIST,
        help="Announce with key=value syntax: server=,key=,addr=,socket=,weight=,modifier1=,modifier2=,check=.",
    )
    subscribe_freq = Scalar(POSITIVE, 10, help="Seconds between two announces.")
    subscription_notify_socket: Scalar[Address | None] = Scalar(
        ADDRESS, None, help="Datagram address where subscription servers send their acknowledgements."
    )
    weight = Scalar(COUNT, 0, help="Weight announced to subscription servers (0 counts as 1).")
    auto_weight = Flag(arg=Arg.REQUIRED, help="Announce processes x cores as the weight (takes a value, as in uWSGI).")
    subscribe_with_modifier1: Scalar[int | None] = Scalar(
        MODIFIER, None, help="Announce this modifier1 whatever the subscription line says."
    )
    unsubscribe_on_graceful_reload = Flag(help="Unsubscribe also during a graceful reload.")
    start_unsubscribed = Flag(help="Prepare the subscriptions but send none (nor unsubscribes).")


class CacheOptions:
    GROUP = "Cache and Python code"

    cache = Scalar(COUNT, 0, help="Create the default shared cache with N items.")
    cache_blocksize = Scalar(POSITIVE, 65536, help="Largest value, in bytes, of a --cache item.")
    cache2 = Multi(
        KEYVAL_LIST,
        help="Create a named cache: name=NAME,items=N[,blocksize=BYTES,keysize=BYTES]. Repeatable; the first "
        "cache defined is the default.",
    )
    import_ = Multi(
        NON_EMPTY,
        aliases=["pyimport", "py-import", "python-import"],
        help="Import this Python module in the master (it can use the uwsgi module, e.g. to fill a cache).",
    )
    shared_import = Multi(
        NON_EMPTY,
        aliases=["shared-pyimport", "shared-py-import", "shared-python-import"],
        help="Import this Python module in every process.",
    )
