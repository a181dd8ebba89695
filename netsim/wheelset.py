"""A seeded set of 50 genuine wheels shaped like a real application's install.

``app`` requires 10 direct dependencies, which between them require the
other 39 (a few leaves are shared, as ``urllib3`` or ``typing-extensions``
are), so ``pip install app`` resolves the whole set level by level the way
a real install does, instead of being handed 50 names at once.

Sizes follow what installs of real applications download: most wheels
20 KB – 2 MB (log-uniform), a few 5 – 20 MB (the ``numpy``/``botocore``
kind), 60 – 100 MB in all. Contents are mixed like real wheels: "native"
wheels are mostly an incompressible shared object, "pure" ones mostly
text (source and data files that deflate about 3×); every member is
deflated, as in wheels built by ``bdist_wheel``. Every byte is drawn from
the seeded generator, so no two wheels share content (a chunk store gets
no dedup advantage) and the same seed gives the same set.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from p2pkg.testing.archives import build_wheel

KB = 1000
MB = 1000 * KB

#: Direct dependencies of ``app``.
DIRECT = (
    "requests",
    "boto3",
    "pandas",
    "fastapi",
    "sqlalchemy",
    "celery",
    "jinja2",
    "rich",
    "cryptography",
    "grpcio",
)
#: Everything below them (39 names).
LEAVES = (
    "urllib3",
    "idna",
    "certifi",
    "charset-normalizer",
    "botocore",
    "s3transfer",
    "jmespath",
    "numpy",
    "python-dateutil",
    "pytz",
    "tzdata",
    "six",
    "starlette",
    "pydantic",
    "pydantic-core",
    "anyio",
    "sniffio",
    "typing-extensions",
    "annotated-types",
    "greenlet",
    "kombu",
    "billiard",
    "vine",
    "amqp",
    "click",
    "click-didyoumean",
    "click-repl",
    "prompt-toolkit",
    "wcwidth",
    "markupsafe",
    "markdown-it-py",
    "mdurl",
    "pygments",
    "cffi",
    "pycparser",
    "protobuf",
    "attrs",
    "packaging",
    "h11",
)
#: Who requires what (every leaf appears at least once; some are shared).
REQUIRES: dict[str, tuple[str, ...]] = {
    "app": DIRECT,
    "requests": ("urllib3", "idna", "certifi", "charset-normalizer"),
    "boto3": ("botocore", "s3transfer", "jmespath"),
    "botocore": ("urllib3", "jmespath", "python-dateutil"),
    "python-dateutil": ("six",),
    "pandas": ("numpy", "python-dateutil", "pytz", "tzdata"),
    "fastapi": ("starlette", "pydantic", "typing-extensions"),
    "starlette": ("anyio",),
    "anyio": ("idna", "sniffio", "h11"),
    "pydantic": ("pydantic-core", "annotated-types", "typing-extensions"),
    "sqlalchemy": ("greenlet", "typing-extensions"),
    "celery": ("kombu", "billiard", "vine", "click", "click-didyoumean", "click-repl"),
    "kombu": ("amqp", "vine"),
    "click-repl": ("prompt-toolkit",),
    "prompt-toolkit": ("wcwidth",),
    "jinja2": ("markupsafe",),
    "rich": ("markdown-it-py", "pygments"),
    "markdown-it-py": ("mdurl",),
    "cryptography": ("cffi",),
    "cffi": ("pycparser",),
    "grpcio": ("protobuf", "attrs", "packaging"),
}
#: The few big ones (5 – 20 MB) and which of them are native (incompressible).
BIG = {"numpy": True, "botocore": False, "pandas": True, "grpcio": True}
#: Native wheels among the small ones (a compiled extension makes most of the bytes).
NATIVE = {"charset-normalizer", "pydantic-core", "greenlet", "cryptography", "markupsafe", "cffi"}

# A pseudo-vocabulary: text drawn from it deflates about 3x, like source and data.
_SYLLABLES = ("ka", "lo", "re", "mi", "tu", "san", "der", "pro", "ex", "val", "_", "id", "str")


@dataclass(frozen=True)
class WheelSet:
    """The built set: its wheels, sizes, and the one name to install."""

    root: str
    paths: list[Path] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.paths)


def _vocabulary(rng: random.Random) -> list[str]:
    words = {"".join(rng.choices(_SYLLABLES, k=rng.randint(1, 4))) for _ in range(4000)}
    return sorted(words)


def _text(rng: random.Random, vocab: list[str], size: int) -> bytes:
    """About ``size`` bytes of unique, source-like text (4 KB lines of words)."""
    out = []
    n = 0
    while n < size:
        line = " ".join(rng.choices(vocab, k=600)) + "\n"
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def _sizes(rng: random.Random) -> dict[str, int]:
    """Seeded on-disk sizes; redrawn until the total is within 60 – 100 MB."""
    names = ["app", *DIRECT, *LEAVES]
    while True:
        sizes = {
            n: int(rng.uniform(5 * MB, 20 * MB)) if n in BIG else int(20 * KB * 100 ** rng.random())
            for n in names
        }
        if 60 * MB <= sum(sizes.values()) <= 100 * MB:
            return sizes


def build_wheelset(dest: Path, seed: int = 12) -> WheelSet:
    """Write the 50 wheels into ``dest`` (created) and return the set."""
    assert len({"app", *DIRECT, *LEAVES}) == 50
    dest.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    vocab = _vocabulary(rng)
    out = WheelSet("app")
    for name, size in _sizes(rng).items():
        module = name.replace("-", "_")
        native = BIG.get(name, name in NATIVE)
        # ~4 KB of real Python (imported modules stay cheap to byte-compile).
        files = {f"{module}/core.py": b"".join(b"X%d = %d\n" % (i, i * i) for i in range(400))}
        if native:
            files[f"{module}/_native.cpython-311-x86_64-linux-gnu.so"] = rng.randbytes(
                int(size * 0.9)
            )
            files[f"{module}/data.txt"] = _text(rng, vocab, int(size * 0.1 * 3))
        else:
            # Text deflates ~3x: ~3 bytes of text per byte of wheel.
            parts = max(1, size // (2 * MB))
            for i in range(parts):
                files[f"{module}/data/part{i}.json"] = _text(rng, vocab, 3 * size // parts)
        requires = [f"{r}>=1.0" for r in REQUIRES.get(name, ())]
        out.paths.append(
            build_wheel(dest, name, "1.0", requires_dist=requires, files=files, compress=True)
        )
    return out
