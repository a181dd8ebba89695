"""Several namespaces in one node: the merged index, claims, pins, and dependency confusion.

Two real namespaces, each published by its own master key: ``corp`` (a
site's private packages) and ``public`` (a mirrored public index) in which
an attacker has published ``acme-utils 99.0`` over the private
``acme-utils 1.0`` and ``acme-secret``, a name the private namespace
claims but lacks.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import anyio
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from netsim.testbed import Testbed, p2pkg_cmd, spawn, status
from p2pkg.core.root import format_pubkey, public_bytes
from p2pkg.core.search_order import SearchPolicy
from p2pkg.io.http.server import PeerServer
from p2pkg.io.store import Store
from p2pkg.roles.cache import Cache
from p2pkg.roles.namespace_choice import NamespaceSpec
from p2pkg.roles.publish import publish
from p2pkg.roles.subscriptions import Subscriptions
from p2pkg.testing.archives import build_wheel
from tests.helpers import wait_until
from tests.installers import ISOLATED, uv, uv_install
from tests.netutil import Services, services

pytestmark = pytest.mark.net

CLAIM = "corp=acme-*"


@dataclass
class Namespace:
    name: str
    store: Path
    key: Ed25519PrivateKey

    @property
    def pins(self) -> frozenset[bytes]:
        return frozenset({public_bytes(self.key)})

    @property
    def pub(self) -> str:
        return format_pubkey(public_bytes(self.key))


def _namespace(tmp: Path, name: str, wheels: list[tuple[str, str]]) -> Namespace:
    dist = tmp / f"{name}-dist"
    dist.mkdir()
    for project, version in wheels:
        build_wheel(dist, project, version, payload=3_000)
    key = Ed25519PrivateKey.generate()
    store = tmp / name
    with Store.open(store, create=True) as st:
        publish(st, [key], [dist])
    return Namespace(name, store, key)


@pytest.fixture(scope="module")
def corp_public(tmp_path_factory: pytest.TempPathFactory) -> tuple[Namespace, Namespace]:
    tmp = tmp_path_factory.mktemp("namespaces")
    corp = _namespace(tmp, "corp", [("acme-utils", "1.0"), ("shared-lib", "1.0")])
    public = _namespace(
        tmp,
        "public",
        [("acme-utils", "99.0"), ("acme-secret", "1.0"), ("pubonly", "1.0"), ("shared-lib", "2.0")],
    )
    return corp, public


def _get(url: str, accept: str = "text/html") -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url, headers={"Accept": accept})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read(), {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), {k.lower(): v for k, v in exc.headers.items()}


async def _aget(url: str, accept: str = "text/html") -> tuple[int, bytes, dict[str, str]]:
    return await anyio.to_thread.run_sync(_get, url, accept)


def _files(page: bytes) -> list[str]:
    return [f["filename"] for f in json.loads(page)["files"]]


JSON = "application/vnd.pypi.simple.v1+json"


async def _two_namespace_cache(
    svc: Services,
    corp: Namespace,
    public: Namespace,
    where: Path,
    *,
    pins: tuple[str, ...] = (),
    corp_peer_is_public: bool = False,
) -> tuple[Cache, str]:
    """Both namespaces served, a cache trusting both (order corp, public; corp claims acme-*)."""
    public_url = (await svc.server(public.store)).url
    corp_url = public_url if corp_peer_is_public else (await svc.server(corp.store)).url
    specs = [
        NamespaceSpec("corp", corp.pins, [corp_url]),
        NamespaceSpec("public", public.pins, [public_url]),
    ]
    policy = SearchPolicy.parse(["corp", "public"], pins=pins, claims=[CLAIM])
    cache = Cache(where, namespaces=specs, policy=policy)
    return cache, await svc.start(cache.run)


@pytest.mark.anyio
async def test_the_merged_index_serves_each_project_whole_from_one_namespace(
    corp_public: tuple[Namespace, Namespace], tmp_path: Path
) -> None:
    corp, public = corp_public
    async with services() as svc:
        _, url = await _two_namespace_cache(svc, corp, public, tmp_path / "cache")

        # The private project, whole: not one file of the public upload.
        code, page, headers = await _aget(f"{url}/simple/acme-utils/", JSON)
        assert code == 200 and _files(page) == ["acme_utils-1.0-py3-none-any.whl"]
        assert headers["x-p2pkg-namespace"] == "corp"
        assert json.loads(page)["_p2pkg"] == {"namespace": "corp"}
        code, page, _ = await _aget(f"{url}/simple/acme-utils/")
        assert b'<meta name="p2pkg:namespace" content="corp">' in page
        # Claimed by corp, which lacks it: served by nobody, and the 404 says why.
        code, body, _ = await _aget(f"{url}/simple/acme-secret/")
        assert code == 404 and b"claimed by namespace 'corp'" in body
        # Only public has it: served from public. Both have it: the order decides.
        code, page, headers = await _aget(f"{url}/simple/pubonly/", JSON)
        assert code == 200 and headers["x-p2pkg-namespace"] == "public"
        code, page, _ = await _aget(f"{url}/simple/shared-lib/", JSON)
        assert _files(page) == ["shared_lib-1.0-py3-none-any.whl"]
        # The merged index lists what may be served, and nothing else.
        code, page, _ = await _aget(f"{url}/simple/", JSON)
        names = {p["name"] for p in json.loads(page)["projects"]}
        assert names == {"acme-utils", "pubonly", "shared-lib"}

        # Each namespace alone under /ns/NAME/simple/ (and its own files).
        code, page, headers = await _aget(f"{url}/ns/public/simple/acme-utils/", JSON)
        assert _files(page) == ["acme_utils-99.0-py3-none-any.whl"]
        assert headers["x-p2pkg-namespace"] == "public"
        public_file = json.loads(page)["files"][0]["url"]  # ../../files/<b3>/<name>
        code, data, _ = await _aget(urljoin(f"{url}/ns/public/simple/acme-utils/", public_file))
        assert code == 200 and len(data) > 3_000
        # ... but the merged /files/ answers only from the namespace that serves
        # the project: the public upload's URL gets nothing there.
        code, _, _ = await _aget(urljoin(f"{url}/simple/acme-utils/", public_file))
        assert code == 404
        code, page, _ = await _aget(f"{url}/simple/acme-utils/", JSON)
        corp_file = json.loads(page)["files"][0]["url"]
        code, data, _ = await _aget(urljoin(f"{url}/simple/acme-utils/", corp_file))
        assert code == 200 and data[:2] == b"PK"

        st = await anyio.to_thread.run_sync(status, url)
        assert st["search_order"] == ["corp", "public"] and st["claims"] == [CLAIM]
        assert st["served_from"]["acme-utils"] == "corp"
        assert st["served_from"]["pubonly"] == "public"
        assert set(st["namespaces"]) == {"corp", "public"}
        assert st["namespaces"]["public"]["base_url"] == f"{url}/ns/public"
        # The status page shows both namespaces, and the host to use.
        code, page, _ = await _aget(f"{url}/")
        assert b'id="peers-corp"' in page and b'id="peers-public"' in page
        assert b'id="root-version-corp"' in page and b'id="served-from"' in page
        assert url.removeprefix("http://").encode() in page

        # The peer protocol: the first namespace at the top, each under /ns/NAME/.
        code, root, _ = await _aget(f"{url}/p2pkg/v1/root", "*/*")
        code2, corp_root, _ = await _aget(f"{url}/ns/corp/p2pkg/v1/root", "*/*")
        code3, public_root, _ = await _aget(f"{url}/ns/public/p2pkg/v1/root", "*/*")
        assert code == code2 == code3 == 200
        assert root == corp_root != public_root


@pytest.mark.anyio
async def test_a_pin_overrides_the_order_but_not_a_claim(
    corp_public: tuple[Namespace, Namespace], tmp_path: Path
) -> None:
    corp, public = corp_public
    async with services() as svc:
        _, url = await _two_namespace_cache(
            svc, corp, public, tmp_path / "c", pins=("shared-*=public", "acme-*=public")
        )
        _, page, headers = await _aget(f"{url}/simple/shared-lib/", JSON)
        assert _files(page) == ["shared_lib-2.0-py3-none-any.whl"]
        assert headers["x-p2pkg-namespace"] == "public"
        _code, page, _ = await _aget(f"{url}/simple/acme-utils/", JSON)
        assert _files(page) == ["acme_utils-1.0-py3-none-any.whl"]  # the claim wins


@pytest.mark.anyio
async def test_a_peer_serving_another_namespaces_root_is_refused(
    corp_public: tuple[Namespace, Namespace], tmp_path: Path
) -> None:
    """corp's only peer serves public's root: corp trusts nothing, and nothing falls through."""
    corp, public = corp_public
    async with services() as svc:
        # corp's peer is misconfigured (or malicious): it serves public's root.
        cache, url = await _two_namespace_cache(
            svc, corp, public, tmp_path / "c", corp_peer_is_public=True
        )
        # corp comes first for every name and cannot answer: an error, never
        # public's acme-utils 99.0 (nor even public's own projects) in its place.
        for project in ("acme-utils", "pubonly"):
            code, body, _ = await _aget(f"{url}/simple/{project}/")
            assert code == 502, (project, code, body)
        assert cache.namespaces["corp"].session.trusted is None
        code, body, _ = await _aget(f"{url}/ns/corp/simple/acme-utils/")
        assert code == 502
        # public alone is fine, and its pages still say so.
        code, _page, headers = await _aget(f"{url}/ns/public/simple/pubonly/", JSON)
        assert code == 200 and headers["x-p2pkg-namespace"] == "public"


def test_subscribing_a_namespace_mounted_under_a_path() -> None:
    subs = Subscriptions()
    assert subs.subscribe("127.0.0.1", 8000, "/ns/corp") == "http://127.0.0.1:8000/ns/corp"
    assert subs.live() == ["http://127.0.0.1:8000/ns/corp"]


@pytest.mark.anyio
async def test_a_mounted_site_answers_under_its_prefix_from_its_own_store(
    corp_public: tuple[Namespace, Namespace],
) -> None:
    corp, public = corp_public
    with Store.open(corp.store) as a, Store.open(public.store) as b:
        top, site = PeerServer(a), PeerServer(b)
        top.mount("/ns/public", site)
        async with services() as svc:
            url = await svc.start(top.run)
            assert site.url == f"{url}/ns/public"
            code, root, _ = await _aget(f"{url}/ns/public/p2pkg/v1/root", "*/*")
            assert code == 200 and root == b.latest_root_stored()[2]  # type: ignore[index]
            code, _, _ = await _aget(f"{url}/ns/nothere/p2pkg/v1/root", "*/*")
            assert code == 404
            code, _, _ = await _aget(f"{url}/ns/public", "*/*")
            assert code == 404
    with pytest.raises(ValueError):
        top.mount("ns/x/", site)


# ---------------------------------------------------------------------------- real processes


def _pip_install(tmp: Path, index: str, project: str) -> subprocess.CompletedProcess[str]:
    venv = tmp / f"pip-{project}"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    cmd = [
        str(venv / "bin" / "python"),
        "-m",
        "pip",
        "--isolated",
        "--no-cache-dir",
        "install",
        "--index-url",
        index,
        project,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=ISOLATED, check=False)


def _version(tmp: Path, project: str) -> str:
    python = tmp / f"pip-{project}" / "bin" / "python"
    module = project.replace("-", "_")
    code = f"import {module}; print({module}.__version__)"
    return subprocess.run(
        [str(python), "-c", code], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.mark.slow
def test_dependency_confusion_pip_and_uv_through_a_seed_and_a_cache(
    corp_public: tuple[Namespace, Namespace], tmp_path: Path
) -> None:
    """Real processes: two servers, one seed for both namespaces, a cache, pip, uv, fetch."""
    corp, public = corp_public
    with Testbed() as bed:
        _, corp_url = bed.serve(corp.store)
        _, public_url = bed.serve(public.store)
        seed_cmd = p2pkg_cmd(
            "seed",
            "--store",
            str(tmp_path / "seed"),
            "--listen",
            "127.0.0.1:0",
            "--namespace",
            f"corp={corp.pub}",
            "--namespace-peer",
            f"corp={corp_url}",
            "--namespace",
            f"public={public.pub}",
            "--namespace-peer",
            f"public={public_url}",
        )
        _, seed = bed.enter_context(spawn(seed_cmd))

        def synced() -> bool:
            st = status(seed)["namespaces"]
            return all(st[n].get("synced_version") == 1 for n in ("corp", "public"))

        wait_until(synced, timeout=30, what="the seed synced both namespaces")
        assert status(f"{seed}/ns/public")["synced_version"] == 1

        cache_cmd = p2pkg_cmd(
            "cache",
            "--store",
            str(tmp_path / "cache"),
            "--listen",
            "127.0.0.1:0",
            "--no-lan",
            "--namespace",
            f"corp={corp.pub}",
            "--namespace-peer",
            f"corp={seed}/ns/corp",
            "--namespace",
            f"public={public.pub}",
            "--namespace-peer",
            f"public={seed}/ns/public",
            "--order",
            "corp,public",
            "--claim",
            CLAIM,
        )
        _, cache = bed.enter_context(spawn(cache_cmd))
        index = f"{cache}/simple/"

        res = _pip_install(tmp_path, index, "acme-utils")
        assert res.returncode == 0, res.stdout + res.stderr
        assert _version(tmp_path, "acme-utils") == "1.0"
        assert uv_install(tmp_path, "uv-acme", index, "acme_utils") == "1.0"
        uv_python = str(tmp_path / "uv-acme" / "bin" / "python")
        res = subprocess.run(
            [uv(), "pip", "install", "--python", uv_python, "--index-url", index, "acme-secret"],
            capture_output=True,
            text=True,
            env=ISOLATED,
            check=False,
        )
        assert res.returncode != 0 and "acme-secret" in res.stderr, res.stderr
        assert "not found in the package registry" in res.stderr or "No solution" in res.stderr
        res = _pip_install(tmp_path, index, "acme-secret")
        assert res.returncode != 0
        assert "No matching distribution found for acme-secret" in res.stdout + res.stderr
        res = _pip_install(tmp_path, index, "pubonly")
        assert res.returncode == 0, res.stdout + res.stderr
        assert _version(tmp_path, "pubonly") == "1.0"
        served = status(cache)["served_from"]
        assert served["acme-utils"] == "corp" and served["pubonly"] == "public"

        # p2pkg fetch resolves by the same rules (here through the seed).
        fetch = [
            *p2pkg_cmd("fetch", "--dest", str(tmp_path / "dl"), "--json"),
            *("--namespace", f"corp={corp.pub}", "--namespace-peer", f"corp={seed}/ns/corp"),
            *("--namespace", f"public={public.pub}"),
            *("--namespace-peer", f"public={seed}/ns/public", "--claim", CLAIM),
        ]
        out = subprocess.run(
            [*fetch, "acme-utils", "pubonly"], capture_output=True, text=True, check=False
        )
        assert out.returncode == 0, out.stderr
        got = {f["filename"]: f["namespace"] for f in json.loads(out.stdout)["files"]}
        assert got == {
            "acme_utils-1.0-py3-none-any.whl": "corp",
            "pubonly-1.0-py3-none-any.whl": "public",
        }
        out = subprocess.run([*fetch, "acme-secret"], capture_output=True, text=True, check=False)
        assert out.returncode != 0 and "claimed by namespace 'corp'" in out.stderr
        assert "Traceback" not in out.stderr
        assert not (tmp_path / "dl" / "acme_secret-1.0-py3-none-any.whl").exists()


# ---------------------------------------------------------------------------- the command line

KEY = "ed25519:" + "11" * 32
PEER = "http://127.0.0.1:9"


def _cli(*args: str) -> tuple[int, str]:
    from click.testing import CliRunner

    from p2pkg.cli import main

    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--namespace", f"corp={KEY}", "--trust", KEY], "--namespace-peer NAME=URL"),
        (["--namespace", f"corp={KEY}"], "has no --namespace-peer corp=URL"),
        (
            ["--namespace", f"corp={KEY}", "--namespace-peer", f"other={PEER}"],
            "'other' is not a --namespace here",
        ),
        (["--namespace", f"Corp!={KEY}"], "namespace name 'Corp!'"),
        (["--namespace", "corp=ed25519:00"], "corp=ed25519:00"),
        (["--namespace", "corp"], "expected NAME=PUBKEY"),
        (["--namespace-peer", f"corp={PEER}"], "--namespace-peer needs --namespace"),
        (
            ["--namespace", f"corp={KEY}", "--namespace-peer", f"corp={PEER}", "--order", "x"],
            "'x', which is not a namespace here",
        ),
        (
            ["--namespace", f"corp={KEY}", "--namespace-peer", f"corp={PEER}", "--claim", "x"],
            "expected LEFT=RIGHT",
        ),
        (["--trust", KEY, "--peer", PEER, "--pin", "a-*=corp"], "need --namespace"),
    ],
)
@pytest.mark.parametrize("command", ["cache", "fetch"])
def test_namespace_options_are_checked_before_anything_runs(
    command: str, args: list[str], says: str, tmp_path: Path
) -> None:
    extra = ["--store", str(tmp_path / "s"), "--listen", "127.0.0.1:0"]
    argv = [command, *(extra if command == "cache" else ["--dest", str(tmp_path), "demo"]), *args]
    code, out = _cli(*argv)
    assert code == 2, out
    assert says in out and "Traceback" not in out


def test_the_config_file_takes_the_namespace_options(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        "[cache]\n"
        f'namespace = ["corp={KEY}", "public={KEY}"]\n'
        f'namespace-peer = ["corp={PEER}", "public={PEER}"]\n'
        'order = "corp,nothere"\n'
        'claim = ["corp=acme-*"]\n'
    )
    code, out = _cli("--config", str(config), "cache", "--store", str(tmp_path / "s"))
    assert code == 2 and "'nothere', which is not a namespace here" in out
    config.write_text(f'[cache]\nnamespace = ["corp={KEY}"]\nnamespace-peer = ["nope"]\n')
    code, out = _cli("--config", str(config), "cache", "--store", str(tmp_path / "s"))
    assert code == 2 and "namespace-peer" in out and "expected NAME=URL" in out


def test_seed_takes_namespaces_but_no_search_order(tmp_path: Path) -> None:
    code, out = _cli("seed", "--store", str(tmp_path), "--namespace", f"corp={KEY}")
    assert code == 2 and "has no --namespace-peer corp=URL" in out
    code, out = _cli("seed", "--store", str(tmp_path), "--namespace", f"c={KEY}", "--order", "c")
    assert code == 2 and "No such option" in out
