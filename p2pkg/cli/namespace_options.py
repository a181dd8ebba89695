"""Options naming several trusted namespaces (cache, fetch, seed) and their search order.

::

    --namespace corp=ed25519:…   --namespace-peer corp=http://10.0.0.5:8000
    --namespace public=ed25519:… --namespace-peer public=http://seed.example:8000
    --order corp,public  --claim 'corp=acme-*'  --pin 'legacy-*=public'

The single ``--trust KEY`` / ``--peer URL`` form stays and means one
namespace (named ``default``). In the TOML config the same keys are arrays
under the command's table (``namespace = ["corp=…", "public=…"]``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from p2pkg.cli.options import parse_url

F = TypeVar("F", bound=Callable[..., Any])


def _check_pairs(what: str, right: Callable[[str], object]) -> Any:
    def check(
        _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
    ) -> tuple[str, ...]:
        from p2pkg.core.search_order import check_namespace_name
        from p2pkg.errors import KeyFileError, PolicyError

        for value in values:
            name, sep, rest = value.partition("=")
            if not sep or not rest:
                raise click.BadParameter(f"{value!r}: expected NAME={what}")
            try:
                check_namespace_name(name)
                right(rest)
            except (PolicyError, KeyFileError) as exc:
                raise click.BadParameter(f"{value}: {exc}") from None
        return values

    return check


def _key(text: str) -> bytes:
    from p2pkg.core.root import parse_pubkey

    return parse_pubkey(text)


def namespace_options(*, policy: bool = True) -> Callable[[F], F]:
    """``--namespace``, ``--namespace-peer`` and (with ``policy``) ``--order/--pin/--claim``."""

    def apply(f: F) -> F:
        if policy:
            f = click.option(
                "--claim",
                "claims",
                multiple=True,
                metavar="NAME=PATTERN",
                help="Namespace NAME alone may serve projects matching PATTERN (a glob such "
                "as 'acme-*'), even when it lacks one: no other namespace can shadow a "
                "private name. Repeatable.",
            )(f)
            f = click.option(
                "--pin",
                "pins",
                multiple=True,
                metavar="PATTERN=NAME",
                help="Serve projects matching PATTERN from namespace NAME only, whatever "
                "the order (claims still win). Repeatable.",
            )(f)
            f = click.option(
                "--order",
                metavar="NAME,NAME",
                help="Search order: a project comes whole from the first namespace that has "
                "it [default: the order of --namespace].",
            )(f)
        f = click.option(
            "--namespace-peer",
            "namespace_peers",
            multiple=True,
            metavar="NAME=URL",
            callback=_check_pairs("URL", parse_url),
            help="A peer of namespace NAME (for a namespace served by another p2pkg node "
            "beside others: http://HOST:PORT/ns/NAME). Repeatable.",
        )(f)
        return click.option(
            "--namespace",
            "namespaces",
            multiple=True,
            metavar="NAME=PUBKEY",
            callback=_check_pairs("PUBKEY", _key),
            help="Trust namespace NAME, signed by PUBKEY (repeat for several keys or "
            "several namespaces). Instead of --trust/--peer.",
        )(f)

    return apply


def namespace_specs(
    trust: Sequence[str],
    peers: Sequence[str],
    namespaces: Sequence[str],
    namespace_peers: Sequence[str],
    *,
    peers_required: bool = True,
) -> list[Any] | None:
    """The ``NamespaceSpec`` list the ``--namespace`` options name (None: none given).

    Raises click.UsageError for a mix of the two forms, a peer of an unknown
    namespace, or (``peers_required``) a namespace without peers.
    """
    from p2pkg.core.root import parse_pubkey
    from p2pkg.roles.namespace_choice import NamespaceSpec

    if not namespaces:
        if namespace_peers:
            raise click.UsageError("--namespace-peer needs --namespace NAME=PUBKEY")
        return None
    if trust or peers:
        raise click.UsageError(
            "--trust/--peer name one namespace; with --namespace, give each namespace's "
            "peers with --namespace-peer NAME=URL"
        )
    keys: dict[str, set[bytes]] = {}
    for value in namespaces:
        name, _, key = value.partition("=")
        keys.setdefault(name, set()).add(parse_pubkey(key))
    urls: dict[str, list[str]] = {name: [] for name in keys}
    for value in namespace_peers:
        name, _, url = value.partition("=")
        if name not in urls:
            raise click.UsageError(
                f"--namespace-peer {value}: {name!r} is not a --namespace here ({', '.join(keys)})"
            )
        if url not in urls[name]:
            urls[name].append(url)
    if peers_required:
        for name, found in urls.items():
            if not found:
                raise click.UsageError(f"namespace {name!r} has no --namespace-peer {name}=URL")
    return [NamespaceSpec(name, frozenset(keys[name]), tuple(urls[name])) for name in keys]


def search_policy(
    specs: Sequence[Any], order: str | None, pins: Sequence[str], claims: Sequence[str]
) -> Any:
    """The ``SearchPolicy`` (a :class:`~p2pkg.errors.PolicyError` is exit 2); warnings logged."""
    import logging

    from p2pkg.core.search_order import SearchPolicy

    policy = SearchPolicy.parse([s.name for s in specs], order, pins, claims)
    for warning in policy.check():
        logging.getLogger("p2pkg.cli").warning("%s", warning)
    return policy
