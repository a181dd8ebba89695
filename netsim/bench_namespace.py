"""Namespace shape at scale (issue: foundation).

Run: ``make bench`` (or ``.venv/bin/python -m netsim.bench_namespace``).

1. Publishes 10,000 genuine small wheels across 2,000 projects (5 versions
   each, 5-200 KB) into a real store, then reports: the signed root's size,
   the objects read below the root to resolve one project (counted on the
   store's reads), and the objects written by publishing one more file.
2. Extrapolates the tree alone to PyPI's scale (600,000 projects) in memory:
   node and leaf sizes and objects rewritten by one change.
"""

from __future__ import annotations

import json
import random
import statistics
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from netsim.common import bench_dir
from p2pkg.core import tree
from p2pkg.core.objects import ObjectId, Project, compress, encode, object_id
from p2pkg.io.store import Store
from p2pkg.roles.namespace import open_store_namespace
from p2pkg.roles.publish import publish
from p2pkg.testing.archives import build_wheel

PROJECTS = 2_000
VERSIONS = 5
PYPI_PROJECTS = 600_000


class CountingGet:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.reads = 0

    def __call__(self, oid: ObjectId) -> bytes:
        self.reads += 1
        return self.store.get_object(oid)


def store_scale() -> dict[str, object]:
    work = bench_dir("namespace")
    dist = work / "dist"
    dist.mkdir()
    rng = random.Random(42)
    t0 = time.perf_counter()
    for p in range(PROJECTS):
        for v in range(VERSIONS):
            build_wheel(dist, f"project-{p}", f"1.{v}", payload=rng.randint(5_000, 200_000))
    built = time.perf_counter() - t0
    print(f"built {PROJECTS * VERSIONS} wheels in {built:.1f}s")

    key = Ed25519PrivateKey.generate()
    store_dir = work / "store"
    with Store.open(store_dir, create=True) as st:
        t0 = time.perf_counter()
        first = publish(st, [key], [dist])
        publish_s = time.perf_counter() - t0
        root_bytes = st.latest_root()
        assert root_bytes is not None
        n_obj = first.objects_written
        print(f"published {len(first.added)} files in {publish_s:.1f}s ({n_obj} objects)")

        ns = open_store_namespace(st)
        get = CountingGet(st)
        reads = []
        for name in rng.sample(range(PROJECTS), 50):
            get.reads = 0
            res = tree.resolve(get, ns.trusted.root.tree, f"project-{name}")
            assert res.project is not None
            reads.append(get.reads)

        extra = work / "extra"
        extra.mkdir()
        one = build_wheel(extra, "project-17", "9.9", payload=10_000)
        t0 = time.perf_counter()
        more = publish(st, [key], [one])
        one_s = time.perf_counter() - t0
        newp = build_wheel(extra, "brand-new-project", "0.1", payload=10_000)
        fresh = publish(st, [key], [newp])
        node_sizes = [
            len(st.get_object(oid))
            for oid, d in tree.iter_tree_ids(st.get_object, ns.trusted.root.tree)
            if d < 2
        ]

    result = {
        "files": len(first.added),
        "projects": PROJECTS,
        "publish_all_s": round(publish_s, 2),
        "root_bytes": len(root_bytes),
        "root_bytes_zstd": len(compress(root_bytes)),
        "objects_read_below_root_to_resolve": max(reads),
        "objects_written_one_more_file": more.objects_written,
        "objects_written_new_project": fresh.objects_written,
        "publish_one_more_file_s": round(one_s, 3),
        "largest_node_bytes": max(node_sizes),
    }
    print(
        f"root: {len(root_bytes)} B ({len(compress(root_bytes))} B zstd); "
        f"resolve reads {max(reads)} objects below the root; "
        f"one more file writes {more.objects_written} objects "
        f"(file manifest, metadata blob, project, leaf, 2 nodes, root) in {one_s:.3f}s"
    )
    return result


def pypi_scale() -> dict[str, object]:
    """The tree alone with 600k projects: node/leaf sizes and update cost."""
    objs: dict[ObjectId, bytes] = {}
    changes: dict[str, ObjectId | None] = {}
    t0 = time.perf_counter()
    for i in range(PYPI_PROJECTS):
        data = encode(Project(f"p{i}", ()))
        pid = object_id(data)
        objs[pid] = data
        changes[f"p{i}"] = pid
    out = tree.TreeWriter()
    top = tree.update(objs.__getitem__, None, changes, out)
    build_s = time.perf_counter() - t0
    objs.update(out.objects)
    by_depth: dict[int, list[int]] = {0: [], 1: [], 2: []}
    for oid, depth in tree.iter_tree_ids(objs.__getitem__, top):
        by_depth[depth].append(len(objs[oid]))
    one = tree.TreeWriter()
    data = encode(Project("one-more", ()))
    objs[object_id(data)] = data
    tree.update(objs.__getitem__, top, {"one-more": object_id(data)}, one)
    rewritten = sum(len(v) for v in one.objects.values())
    result = {
        "projects": PYPI_PROJECTS,
        "build_s": round(build_s, 1),
        "top_node_bytes": by_depth[0][0],
        "level1_node_bytes_median": statistics.median(by_depth[1]),
        "leaves": len(by_depth[2]),
        "leaf_bytes_median": statistics.median(by_depth[2]),
        "leaf_bytes_max": max(by_depth[2]),
        "objects_rewritten_per_change": len(one.objects),
        "bytes_rewritten_per_change": rewritten,
    }
    print(
        f"PyPI scale ({PYPI_PROJECTS} projects): top node {by_depth[0][0]} B, "
        f"level-1 nodes ~{statistics.median(by_depth[1]):.0f} B, {len(by_depth[2])} leaves "
        f"(median {statistics.median(by_depth[2]):.0f} B, max {max(by_depth[2])} B); "
        f"one change rewrites {len(one.objects)} tree objects, {rewritten} B"
    )
    return result


def main() -> None:
    print(json.dumps({"store": store_scale(), "pypi_tree": pypi_scale()}))


if __name__ == "__main__":
    main()
