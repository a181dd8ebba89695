"""Which trusted namespace serves a project: order, pins and claims. Pure.

A node may trust several namespaces — a site's private packages beside a
mirrored public index — each with its own keys, peers and store. Installers
merge indexes by taking the highest version among all of them
(``--extra-index-url``), which is how *dependency confusion* happens: a
public upload under a private name wins. So the node decides per project,
and a project is always served whole from one namespace, never as a union:

1. **Claims** (``--claim 'corp=acme-*'``): a namespace claims name patterns.
   A claimed name is served only by its claimer — if the claimer lacks it,
   by nobody. The first claim (in the order given) that matches decides.
2. **Pins** (``--pin 'legacy-*=public'``): a pattern pinned to a namespace
   is served from that namespace only, whatever the order.
3. **Order** (``--order corp,public``): otherwise the first namespace in the
   order that has the project.

Claims beat pins: a pin cannot reopen a claimed name to another namespace
(:func:`SearchPolicy.check` reports such a pin). Patterns are shell globs
matched against PEP 503 normalized names, and normalized themselves
(``acme_*`` claims ``acme-utils``).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from p2pkg.core.objects import normalize_name
from p2pkg.errors import PolicyError

#: A namespace's name: what ``/ns/NAME/simple/`` and the status page call it.
NAMESPACE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
MAX_PATTERNS = 1000


def _pattern(text: str) -> str:
    """A glob over normalized names (its literal runs of ``-_.`` normalized too)."""
    if not text or len(text) > 200:
        raise PolicyError(f"pattern {text!r}: 1 to 200 characters")
    return re.sub(r"[-_.]+", "-", text).lower()


def _split(text: str, what: str) -> tuple[str, str]:
    left, sep, right = text.partition("=")
    if not sep or not left or not right:
        raise PolicyError(f"{what} {text!r}: expected LEFT=RIGHT")
    return left.strip(), right.strip()


def check_namespace_name(name: str) -> str:
    if not NAMESPACE_NAME.fullmatch(name):
        raise PolicyError(
            f"namespace name {name!r}: 1-32 of a-z, 0-9, '-', '_', starting with a letter or digit"
        )
    return name


@dataclass(frozen=True, slots=True)
class SearchPolicy:
    """The order, pins and claims of a multi-namespace node (see the module doc)."""

    order: tuple[str, ...]
    pins: tuple[tuple[str, str], ...] = ()  # (pattern, namespace)
    claims: tuple[tuple[str, str], ...] = ()  # (namespace, pattern)

    @classmethod
    def parse(
        cls,
        namespaces: Sequence[str],
        order: str | None = None,
        pins: Iterable[str] = (),
        claims: Iterable[str] = (),
    ) -> SearchPolicy:
        """From command-line or config values; every name must be a known namespace.

        ``order``: ``"a,b"`` (default: ``namespaces`` as given); ``pins``:
        ``"PATTERN=NAMESPACE"``; ``claims``: ``"NAMESPACE=PATTERN"``.
        """
        known = [check_namespace_name(n) for n in namespaces]
        if len(set(known)) != len(known):
            raise PolicyError(f"namespaces named twice: {', '.join(known)}")
        listed = [n.strip() for n in order.split(",")] if order else list(known)
        for name in listed:
            if name not in known:
                raise PolicyError(f"--order names {name!r}, which is not a namespace here")
        if len(set(listed)) != len(listed):
            raise PolicyError(f"--order {order!r} names a namespace twice")
        # Namespaces left out of the order come after it, in the order given.
        full = (*listed, *(n for n in known if n not in listed))
        pin_list = []
        for text in pins:
            pattern, ns = _split(text, "--pin")
            if ns not in known:
                raise PolicyError(f"--pin {text!r}: {ns!r} is not a namespace here")
            pin_list.append((_pattern(pattern), ns))
        claim_list = []
        for text in claims:
            ns, pattern = _split(text, "--claim")
            if ns not in known:
                raise PolicyError(f"--claim {text!r}: {ns!r} is not a namespace here")
            claim_list.append((ns, _pattern(pattern)))
        if len(pin_list) + len(claim_list) > MAX_PATTERNS:
            raise PolicyError(f"more than {MAX_PATTERNS} pins and claims")
        return cls(full, tuple(pin_list), tuple(claim_list))

    def claimer(self, project: str) -> str | None:
        """The namespace that claims ``project`` (normalized), if one does."""
        for ns, pattern in self.claims:
            if fnmatch.fnmatchcase(project, pattern):
                return ns
        return None

    def candidates(self, project: str) -> tuple[str, ...]:
        """The namespaces that may serve ``project``, in the order to try them."""
        name = normalize_name(project)
        claimer = self.claimer(name)
        if claimer is not None:
            return (claimer,)
        for pattern, ns in self.pins:
            if fnmatch.fnmatchcase(name, pattern):
                return (ns,)
        return self.order

    def choose(self, project: str, has: Callable[[str], bool]) -> str | None:
        """The namespace that serves ``project``: the first candidate that ``has`` it.

        ``has(namespace)`` says whether that namespace lists the project.
        None: nobody may serve it (claimed by a namespace that lacks it, or
        listed nowhere it may come from).
        """
        for ns in self.candidates(project):
            if has(ns):
                return ns
        return None

    def merge(self, listed: Mapping[str, Collection[str]]) -> dict[str, str]:
        """The merged index: each project name -> the namespace that serves it.

        ``listed`` maps a namespace to the (normalized) project names it
        lists. A name no allowed namespace lists (say, claimed by one that
        lacks it) is left out.
        """
        sets = {ns: set(names) for ns, names in listed.items()}
        out: dict[str, str] = {}
        for names in sets.values():
            for name in names:
                if name in out:
                    continue
                for ns in self.candidates(name):
                    if name in sets.get(ns, ()):
                        out[name] = ns
                        break
        return out

    def check(self) -> list[str]:
        """Warnings about this policy: pins that a claim overrides."""
        out = []
        for pattern, ns in self.pins:
            for claimer, claimed in self.claims:
                if claimer != ns and (
                    fnmatch.fnmatchcase(pattern, claimed) or fnmatch.fnmatchcase(claimed, pattern)
                ):
                    out.append(
                        f"--pin {pattern}={ns} overlaps --claim {claimer}={claimed}: "
                        f"the claim wins for the names both match"
                    )
        return out


__all__ = ["NAMESPACE_NAME", "PolicyError", "SearchPolicy", "check_namespace_name"]
