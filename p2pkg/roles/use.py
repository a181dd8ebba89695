"""``p2pkg use``: point the user's pip and uv at a p2pkg cache, and take it back.

1. **Find** the cache: a URL given, or the first cache announced on the LAN
   (DNS-SD, ``_p2pkg._tcp``) for a key the user trusts.
2. **Check** it: the root it serves (at its base URL, or under ``/ns/NAME``
   for each namespace it names in its status) must verify against the
   user's pinned keys — a cache that merely claims the key on the LAN is
   not enough.
3. **Write** the user's configuration: pip's ``global.index-url`` in the
   user's ``pip.conf`` and uv's default index in the user's ``uv.toml``.
   The files as they were are saved first (once: using another cache later
   keeps the original), and ``--undo`` puts them back byte for byte (or
   removes a file that did not exist).

Paths follow each tool's own rules on Linux and macOS:
``$XDG_CONFIG_HOME/pip/pip.conf`` (default ``~/.config/pip/pip.conf``) and
``$XDG_CONFIG_HOME/uv/uv.toml`` (default ``~/.config/uv/uv.toml``).
"""

from __future__ import annotations

import configparser
import io
import json
import os
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from p2pkg.errors import FetchError, P2pkgError, PolicyError, local_io
from p2pkg.io.fsutil import atomic_write
from p2pkg.roles.links import Peer
from p2pkg.roles.namespace_choice import DEFAULT_NAMESPACE
from p2pkg.roles.session import Session


class ConfigFileError(PolicyError):
    """The user's pip or uv config cannot be changed safely as it is (a usage error, exit 2)."""


BLOCK_START = "# >>> p2pkg use: the default index (undo: p2pkg use --undo) >>>"
BLOCK_END = "# <<< p2pkg use <<<"


@dataclass
class Change:
    tool: str
    path: Path
    what: str


@dataclass
class UseResult:
    url: str  # the cache's base URL
    index_url: str
    namespace: str  # the namespace whose root verified
    changes: list[Change] = field(default_factory=list)


def config_home() -> Path:
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return Path(xdg) if xdg else Path.home() / ".config"


def pip_config_path() -> Path:
    return config_home() / "pip" / "pip.conf"


def uv_config_path() -> Path:
    return config_home() / "uv" / "uv.toml"


def backup_dir() -> Path:
    import platformdirs

    return platformdirs.user_state_path("p2pkg") / "use"


# ---------------------------------------------------------------------------- find and check


async def find_on_lan(pinned: frozenset[bytes], interfaces: Sequence[str], wait: float) -> str:
    from p2pkg.roles.discover import lan_peers

    found = await lan_peers(pinned, interfaces or None, wait)
    if not found:
        raise FetchError("no p2pkg cache for this key announced itself on the LAN")
    return found[0].url


async def check_cache(url: str, pinned: frozenset[bytes]) -> str:
    """The namespace of ``url`` whose root verifies against ``pinned`` (else raise).

    The cache's first namespace is served at its base URL; the others (its
    status names them) under ``/ns/NAME``.
    """
    candidates = [("", url)]
    try:
        from p2pkg.io.http.client import PeerClient

        client = PeerClient(url)
        try:
            status, body, _ = await client.get_bytes("/p2pkg/v1/status", 1 << 20)
        finally:
            client.close()
        names = json.loads(body).get("namespaces", {}) if status == 200 else {}
        candidates += [(str(n), f"{url}/ns/{n}") for n in names if isinstance(n, str)]
    except (P2pkgError, ValueError, AttributeError):
        pass  # no status: only the base URL is tried
    problems = []
    for name, base in candidates:
        session = Session(pinned, [Peer(base)])
        try:
            await session.refresh_root()
            return name or DEFAULT_NAMESPACE
        except P2pkgError as exc:
            problems.append(f"{base}: {exc}")
        finally:
            session.close()
    raise FetchError(
        f"{url} serves no namespace signed by the trusted key(s): " + "; ".join(problems)
    )


# ---------------------------------------------------------------------------- configuration


class Backups:
    """The user's files as they were before ``p2pkg use`` first changed them."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.manifest = directory / "manifest.json"

    def _load(self) -> dict[str, dict[str, object]]:
        try:
            with local_io(self.manifest, "reading"):
                data = json.loads(self.manifest.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise ConfigFileError(f"{self.manifest} is damaged ({exc}); remove it") from None
        return data if isinstance(data, dict) else {}

    def save(self, tool: str, path: Path) -> None:
        """Keep ``path`` as it is now, unless an earlier ``use`` already kept it."""
        entries = self._load()
        if tool in entries:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        entry: dict[str, object] = {"path": str(path), "existed": path.exists()}
        if path.exists():
            copy = self.dir / f"{tool}.orig"
            atomic_write(copy, path.read_bytes())
            entry["copy"] = str(copy)
        entries[tool] = entry
        atomic_write(self.manifest, json.dumps(entries, indent=2).encode())

    def restore(self, tools: Sequence[str]) -> list[Change]:
        entries = self._load()
        out = []
        for tool in tools:
            entry = entries.pop(tool, None)
            if entry is None:
                continue
            path = Path(str(entry["path"]))
            if entry.get("existed"):
                copy = Path(str(entry["copy"]))
                atomic_write(path, copy.read_bytes())
                copy.unlink(missing_ok=True)
                out.append(Change(tool, path, "restored as it was"))
            else:
                path.unlink(missing_ok=True)
                out.append(Change(tool, path, "removed (it did not exist before)"))
        if entries:
            atomic_write(self.manifest, json.dumps(entries, indent=2).encode())
        else:
            self.manifest.unlink(missing_ok=True)
        return out


def write_pip(path: Path, index_url: str) -> Change:
    """Set ``global.index-url`` in pip's user config (other settings kept)."""
    parser = configparser.RawConfigParser()
    if path.exists():
        try:
            parser.read_string(path.read_text())
        except (configparser.Error, UnicodeDecodeError) as exc:
            raise ConfigFileError(f"{path} is not a valid pip config: {exc}") from None
    if not parser.has_section("global"):
        parser.add_section("global")
    parser.set("global", "index-url", index_url)
    out = io.StringIO()
    parser.write(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, out.getvalue().encode())
    return Change("pip", path, f"global.index-url = {index_url}")


def write_uv(path: Path, index_url: str) -> Change:
    """Make ``index_url`` uv's default index (a marked block in the user's uv.toml)."""
    text = path.read_text() if path.exists() else ""
    start, end = text.find(BLOCK_START), text.find(BLOCK_END)
    if start != -1 and end > start:  # ours, from an earlier `use`: replaced
        text = text[:start] + text[end + len(BLOCK_END) :].lstrip("\n")
    try:
        existing = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path} is not valid TOML: {exc}") from None
    defaults = [i for i in existing.get("index", []) if isinstance(i, dict) and i.get("default")]
    if defaults or "index-url" in existing:
        raise ConfigFileError(
            f"{path} already sets a default index; remove it (or use --pip only) and retry"
        )
    block = f'{BLOCK_START}\n[[index]]\nurl = "{index_url}"\ndefault = true\n{BLOCK_END}\n'
    text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + block
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text.encode())
    return Change("uv", path, f"default index = {index_url}")


def apply(index_url: str, tools: Sequence[str], backups: Backups) -> list[Change]:
    changes = []
    for tool in tools:
        path = pip_config_path() if tool == "pip" else uv_config_path()
        backups.save(tool, path)
        changes.append(write_pip(path, index_url) if tool == "pip" else write_uv(path, index_url))
    return changes


__all__ = [
    "Backups",
    "Change",
    "UseResult",
    "apply",
    "backup_dir",
    "check_cache",
    "find_on_lan",
    "pip_config_path",
    "uv_config_path",
]
