"""Commands on a store: keygen, publish (and publish --from-index), show, verify, export."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from p2pkg.cli.app import main
from p2pkg.cli.exits import EXIT_CODES, errors_as_exit
from p2pkg.cli.mirror_options import mirror_options, mirror_selection
from p2pkg.cli.options import (
    check_upload_time,
    emit,
    json_option,
    parse_trust,
    signing_keys_option,
    store_option,
    trust_option,
    url_list_option,
)
from p2pkg.cli.progress import progress_bar
from p2pkg.cli.values import DURATION
from p2pkg.errors import UpstreamError


@main.command()
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the private key (created with mode 0600).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing key file.")
@json_option
def keygen(out: Path, force: bool, as_json: bool) -> None:
    """Create an Ed25519 signing key; print the public key to pin with --trust.

    Keep the private key secret: whoever holds it can sign the namespace.
    The printed line (ed25519:<hex>) is what clients, seeds and caches pass
    to --trust.
    """
    from p2pkg.core.root import format_pubkey
    from p2pkg.io.keys import generate_key_file

    with errors_as_exit():
        pub = format_pubkey(generate_key_file(out, force=force))
    emit(as_json, {"public_key": pub, "private_key_file": str(out)}, pub)


@main.command()
@store_option
@signing_keys_option
@click.option("--namespace", help="Namespace name (first publish only; default 'main').")
@click.option(
    "--expires",
    type=DURATION,
    default="30d",
    show_default=True,
    help="How long the new root stays valid (s/m/h/d/w). Re-sign before then.",
)
@click.option(
    "--rotate-to",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Hand the namespace to this new key: the root is signed by old and new keys.",
)
@click.option("--yank", multiple=True, metavar="FILENAME", help="Mark a published file yanked.")
@click.option("--yank-reason", default="", help="Reason shown for --yank.")
@click.option("--unyank", multiple=True, metavar="FILENAME", help="Clear a file's yank.")
@url_list_option("--notify", "Push the new root to this seed. Repeatable.")
@click.option(
    "--upload-time",
    default="mtime",
    show_default=True,
    metavar="mtime|now|archive|ISO-8601",
    callback=check_upload_time,
    help="Upload time given to new files (PEP 691; uv --exclude-newer and lockfiles "
    "go by it): mtime = each file's modification time, now = the publish time, "
    "archive = the build time recorded inside the archive, or one fixed ISO 8601 "
    "time, e.g. --upload-time 2024-05-01T12:00:00Z (a date alone is midnight UTC). "
    "Files already published keep theirs.",
)
@mirror_options
@json_option
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
def publish(
    store: Path,
    key: tuple[Path, ...],
    namespace: str | None,
    expires: int,
    rotate_to: Path | None,
    yank: tuple[str, ...],
    yank_reason: str,
    unyank: tuple[str, ...],
    notify: tuple[str, ...],
    upload_time: str,
    from_index: str | None,
    projects: tuple[str, ...],
    requirements: Path | None,
    all_projects: bool,
    platforms: tuple[str, ...],
    python_versions: tuple[str, ...],
    no_sdists: bool,
    latest: int | None,
    prereleases: bool,
    as_json: bool,
    paths: tuple[Path, ...],
) -> None:
    """Publish wheels and sdists (files or directories) and sign a new root.

    Archives are validated (name and version must match their metadata),
    copied into the store, chunked and hashed; the projects they belong to
    and the root are rewritten and signed with version + 1. Publishing a
    file that is already published is a no-op. With no PATHS (and no
    --yank/--rotate-to), the namespace is re-signed with a fresh expiry.

    With --from-index URL (and --project, --requirements or --all), mirror
    an upstream index instead; see docs/operators.md, "Mirroring an index".
    """
    from p2pkg.io.keys import load_private_key
    from p2pkg.io.store import Store
    from p2pkg.roles.publish import parse_upload_time
    from p2pkg.roles.publish import publish as do_publish

    mirror_flags = {
        "--project": bool(projects),
        "--requirements": requirements is not None,
        "--all": all_projects,
        "--platform": bool(platforms),
        "--python-version": bool(python_versions),
        "--no-sdists": no_sdists,
        "--latest": latest is not None,
        "--prereleases": prereleases,
    }
    if from_index is None:
        stray = [flag for flag, given in mirror_flags.items() if given]
        if stray:
            raise click.UsageError(f"{stray[0]} needs --from-index URL")
    else:
        _check_mirror_usage(paths, yank, unyank, rotate_to, projects, requirements, all_projects)
        _publish_from_index(
            store,
            key,
            namespace,
            expires,
            notify,
            from_index,
            projects,
            requirements,
            all_projects,
            (platforms, python_versions, no_sdists, latest, prereleases),
            as_json,
        )
        return

    when = parse_upload_time(upload_time)  # checked by check_upload_time
    with errors_as_exit():
        keys = [load_private_key(k) for k in key]
        new_key = load_private_key(rotate_to) if rotate_to else None
        with Store.open(store, create=True) as st, progress_bar("publishing") as bar:
            result = do_publish(
                st,
                keys,
                list(paths),
                namespace=namespace,
                expires_in=expires,
                rotate_to=new_key,
                yank=dict.fromkeys(yank, yank_reason),
                unyank=unyank,
                progress=bar,
                upload_time=when,
            )
    pushed: dict[str, str] = {}
    if notify and result.changed:
        pushed = _push_root(store, notify)
    data = {
        "notified": pushed,
        "namespace": result.namespace,
        "version": result.version,
        "root_id": result.root_id.hex(),
        "changed": result.changed,
        "added": list(result.added),
        "unchanged": list(result.unchanged),
        "objects_written": result.objects_written,
    }
    if result.changed:
        text = (
            f"root version {result.version} id {result.root_id.hex()} "
            f"({len(result.added)} added, {len(result.unchanged)} unchanged)"
        )
    else:
        text = (
            f"nothing changed: root version {result.version} id {result.root_id.hex()} "
            f"({len(result.unchanged)} already published)"
        )
    emit(as_json, data, text)


def _check_mirror_usage(
    paths: tuple[Path, ...],
    yank: tuple[str, ...],
    unyank: tuple[str, ...],
    rotate_to: Path | None,
    projects: tuple[str, ...],
    requirements: Path | None,
    all_projects: bool,
) -> None:
    """--from-index publishes what the upstream has: no PATHS, yanks or rotation beside it."""
    if paths:
        raise click.UsageError("--from-index and archive PATHS cannot be combined")
    for flag, given in (("--yank", yank), ("--unyank", unyank), ("--rotate-to", rotate_to)):
        if given:
            raise click.UsageError(f"{flag} cannot be combined with --from-index")
    if all_projects and (projects or requirements is not None):
        raise click.UsageError("--all cannot be combined with --project or --requirements")
    if not (all_projects or projects or requirements is not None):
        raise click.UsageError("--from-index needs --project NAME, --requirements FILE or --all")


def _publish_from_index(
    store: Path,
    key: tuple[Path, ...],
    namespace: str | None,
    expires: int,
    notify: tuple[str, ...],
    index_url: str,
    projects: tuple[str, ...],
    requirements: Path | None,
    all_projects: bool,
    filter_values: tuple[tuple[str, ...], tuple[str, ...], bool, int | None, bool],
    as_json: bool,
) -> None:
    """``publish --from-index``: mirror, print counts and problems, notify seeds."""
    from p2pkg.io.keys import load_private_key
    from p2pkg.io.store import Store
    from p2pkg.roles.mirror import mirror_index

    selection, filters = mirror_selection(projects, requirements, all_projects, filter_values)
    with errors_as_exit():
        keys = [load_private_key(k) for k in key]
        with (
            Store.open(store, create=True) as st,
            progress_bar("downloading") as bar,
            progress_bar("publishing") as publishing,
        ):
            result = mirror_index(
                st,
                keys,
                index_url,
                selection,
                filters=filters,
                progress=bar,
                publish_progress=publishing,
                namespace=namespace,
                expires_in=expires,
            )
    published = result.publish
    pushed: dict[str, str] = {}
    if notify and published is not None and published.changed:
        pushed = _push_root(store, notify)
    for kind, problems in (
        ("refused", result.refused),
        ("failed", result.failed),
        ("conflict", result.conflicts),
        ("note", result.notes),
    ):
        for problem in problems:
            click.echo(f"p2pkg: {kind}: {problem}", err=True)
    for name in result.missing:
        click.echo(f"p2pkg: warning: {name}: no such project upstream", err=True)
    data: dict[str, Any] = {
        "index": index_url,
        "notified": pushed,
        "changed": bool(published and published.changed),
        **result.counts(),
        "added": list(result.added),
        "removed": list(result.removed),
        "refused": [_problem(p) for p in result.refused],
        "failed": [_problem(p) for p in result.failed],
        "conflicts": [_problem(p) for p in result.conflicts],
        "notes": [_problem(p) for p in result.notes],
        "missing": list(result.missing),
    }
    if published is not None:
        data.update(
            namespace=published.namespace,
            version=published.version,
            root_id=published.root_id.hex(),
        )
    c = result.counts()
    text = (
        f"{c['projects']} project(s) ({c['unchanged_projects']} unchanged), "
        f"{c['files_added']} file(s) added, {c['removed']} removed, "
        f"{c['yanked']} yanked, {c['unyanked']} unyanked, {c['refused']} refused, "
        f"{c['failed']} failed; {c['upstream_requests']} upstream request(s), "
        f"{c['bytes_downloaded']} bytes"
    )
    if published is not None and published.changed:
        text += f"; root version {published.version} id {published.root_id.hex()}"
    emit(as_json, data, text)
    if result.failed:
        sys.exit(EXIT_CODES[UpstreamError])  # what did arrive is published; the rest next run


def _problem(p: Any) -> dict[str, Any]:
    return {"project": p.project, "filename": p.filename, "reason": p.reason}


def _push_root(store: Path, urls: tuple[str, ...]) -> dict[str, str]:
    import anyio

    from p2pkg.io.store import Store
    from p2pkg.roles.seed import notify

    with Store.open(store) as st:
        latest = st.latest_root_stored()
    assert latest is not None
    out = anyio.run(notify, list(urls), latest[2])
    for url, outcome in out.items():
        if outcome != "ok":
            click.echo(f"p2pkg: warning: could not notify {url}: {outcome}", err=True)
    return out


@main.command()
@store_option
@trust_option
@json_option
@click.argument("project", required=False)
def show(store: Path, trust: tuple[str, ...], as_json: bool, project: str | None) -> None:
    """Show the namespace (verified): the root, its projects, or one project's files."""
    from p2pkg.io.store import Store
    from p2pkg.roles.namespace import open_store_namespace

    with errors_as_exit(), Store.open(store) as st:
        ns = open_store_namespace(st, parse_trust(trust))
        root = ns.trusted.root
        head = {
            "namespace": root.namespace,
            "version": root.version,
            "root_id": ns.trusted.id.hex(),
            "created": root.created,
            "expires": root.expires,
            "keys": [f"ed25519:{k.hex()}" for k in root.keys],
            "threshold": root.threshold,
        }
        if project is None:
            # A cache or a --project seed holds only some tree paths: list what it holds.
            held = ns.holding()
            names = sorted(held.projects)
            data = {**head, "projects": names, "partial": held.partial}
            summary = f"{len(names)} project(s)"
            if held.partial:
                data["subtrees_missing"] = held.subtrees_missing
                summary = (
                    f"partial store: metadata for {len(names)} project(s) "
                    f"({held.subtrees_missing} subtree(s) not held)"
                )
            lines = [
                f"namespace {root.namespace} version {root.version} "
                f"(expires {_fmt_time(root.expires)}), {summary}",
                *names,
            ]
        else:
            proj = ns.require_project(project)
            partial = ns.may_be_partial and ns.holding().partial
            files = [_show_file(st, m, f.filename, partial) for f, m in ns.held_manifests(proj)]
            data = {**head, "project": proj.name, "files": files, "partial": partial}
            title = f"{proj.name}: {len(files)} file(s)"
            lines = [title + (" (partial store: [held] = archive held here)" if partial else "")]
            for f in files:
                if "size" not in f:
                    lines.append(f"  {f['filename']}  (metadata not held)")
                    continue
                flags = " [yanked]" if f["yanked"] is not None else ""
                flags += " [held]" if f.get("held") else ""
                lines.append(f"  {f['filename']}  {f['size']} bytes  sha256={f['sha256']}{flags}")
    emit(as_json, data, "\n".join(lines))


def _show_file(st: Any, m: Any, filename: str, partial: bool) -> dict[str, Any]:
    """One file of ``show PROJECT``; on a partial store, whether its archive is held."""
    if m is None:  # a partial store holds the project but not this manifest
        return {"filename": filename, "held": False, "metadata_held": False}
    out = {
        "filename": m.filename,
        "version": m.version,
        "size": m.size,
        "sha256": m.sha256.hex(),
        "blake3": m.blake3.hex(),
        "requires_python": m.requires_python or None,
        "yanked": m.yanked,
        "upload_time": m.upload_time,
        "chunks": len(m.chunks),
        "core_metadata": m.core_metadata is not None,
    }
    if partial:
        out["held"] = st.has_file(m.blake3)
    return out


def _fmt_time(ts: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


@main.command()
@store_option
@trust_option
@json_option
def verify(store: Path, trust: tuple[str, ...], as_json: bool) -> None:
    """Re-hash every object and archive in the store and check the root chain.

    Exits 1 if anything the store claims is missing or does not match its
    hash; warnings (leftovers of an interrupted write, an expired root) do
    not fail the check.
    """
    from p2pkg.io.store import Store
    from p2pkg.roles.verify import verify_store

    with errors_as_exit(), Store.open(store) as st, progress_bar("verifying") as bar:
        report = verify_store(st, parse_trust(trust), progress=bar)
    data = {
        "ok": report.ok,
        "problems": report.problems,
        "warnings": report.warnings,
        "counts": report.counts,
    }
    lines = [f"problem: {p}" for p in report.problems]
    lines += [f"warning: {w}" for w in report.warnings]
    summary = ", ".join(f"{k}={v}" for k, v in sorted(report.counts.items()))
    lines.append(("ok: " if report.ok else "FAILED: ") + summary)
    emit(as_json, data, "\n".join(lines))
    if not report.ok:
        sys.exit(1)


@main.command()
@store_option
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write the static peer layout to.",
)
@json_option
def export(store: Path, out: Path, as_json: bool) -> None:
    """Export a store as static files that any HTTP server can serve as a peer.

    Serve OUT with nginx or `python -m http.server` and give its URL to
    --peer/--upstream: clients fetch whole archives or byte ranges from it.
    Incremental; the root is written last.
    """
    from p2pkg.io.store import Store
    from p2pkg.roles.export import export_store

    with errors_as_exit(), Store.open(store) as st:
        result = export_store(st, out)
    data = {"objects": result.objects, "files": result.files, "root_version": result.root_version}
    emit(as_json, data, f"exported to {out}: {result.objects} objects, {result.files} files")
