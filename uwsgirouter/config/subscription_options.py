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
    Converter,
    choice,
    integer,
)
from uwsgirouter.config.setting import Arg, Flag, Multi, Scalar


def _sign_check(raw: str) -> str:
    """Validate ``DIGEST:DIR`` now (an unknown digest is a start-up error); the master splits it again."""
    from uwsgirouter.subscription.signing import split_sign_spec  # cryptography is loaded only when used

    split_sign_spec(raw)
    return raw


SIGN_CHECK: Converter[str] = Converter("DIGEST:DIR, for example SHA1:/etc/uwsgi/keys", _sign_check, "DIGEST:DIR")
UID = integer(0, 2**32 - 1, "UID")


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
        POSITIVE,
        32768,
        help="Capacity of the node table. When full, a new node takes the place of a key no request has used "
        "yet (oldest first); it is refused only when every key is in use.",
    )
    subscription_max_keys = Scalar(
        POSITIVE,
        16384,
        help="Capacity of the key table. When full, a new key takes the place of a key no request has used yet; "
        "a sender holding a quarter of the keys only gives up its own.",
    )
    subscriptions_sign_check: Scalar[str | None] = Scalar(
        SIGN_CHECK,
        None,
        help="Accept only subscriptions signed with DIGEST (SHA1, SHA256, ...), checked against the public key "
        "DIR/<key>.pem (key bytes outside A-Za-z0-9._- become _); re-read when the file changes.",
    )
    subscriptions_sign_check_tolerance = Scalar(
        SECONDS,
        60,
        help="Seconds a signed subscription's clock may be off from ours (uWSGI: 86400); a counter per node "
        "refuses replayed packets, unsubscribes included.",
    )
    subscriptions_sign_skip_uid = Multi(
        UID, help="Skip the signature check for datagrams sent by this uid (needs --subscriptions-use-credentials)."
    )
    subscriptions_credentials_check = Multi(
        PATH,
        help="Accept a key only from senders owning the file DIR+key (uid and gid; plain concatenation, as uWSGI; "
        "needs --subscriptions-use-credentials). Repeatable.",
    )
    subscriptions_use_credentials = Flag(
        help="Read the sender's SCM_CREDENTIALS (pid, uid, gid) on UNIX datagram subscription servers.",
    )


class SubscriberOptions:
    GROUP = "Subscribing an instance"

    subscribe_to = Multi(
        NON_EMPTY,
        aliases=["st", "subscribe"],
        help="Announce this instance to a subscription server: [ADDR=]SERVER:KEY[,MODIFIER1[,DIGEST:PRIVKEY]] or "
        "[ADDR=]SERVER:@MAPFILE (never signed). DIGEST:PRIVKEY signs every packet (SHA1:/etc/uwsgi/key.pem). "
        "Repeatable.",
    )
    subscribe2 = Multi(
        KEYVAL_LIST,
        help="Announce with key=value syntax: server=,key=,addr=,socket=,weight=,modifier1=,modifier2=,check=,"
        "sign=DIGEST:PRIVKEY.",
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
