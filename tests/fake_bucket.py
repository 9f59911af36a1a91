"""An offline stand-in for Google Cloud Storage: `gs://...` paths opened through `etils.epath` land in a
local temporary folder.

`etils.epath.Path("gs://bucket/a/b")` picks its file-system backend from
`etils.epath.gpath._PREFIX_TO_BACKEND["gs"]` (or TensorFlow's gfile when TensorFlow is installed).
The `fake_bucket` fixture swaps in `LocalBucketBackend`, which maps `gs://<bucket>/<key>` to
`<root>/<bucket>/<key>` and otherwise behaves like epath's local backend, so code that reads and
writes through epath works unchanged. Code that hands the `gs://` string to builtin `open`,
`os.makedirs`, `cv2.imwrite`, `savefig(str)`, ... does not: reading fails, and writing either
fails or creates a folder literally named `gs:` in the current directory. The fixture runs each
test in an empty current directory and fails the test if a `gs:` entry appears there
(`FakeBucket.assert_no_local_gs_dir`, also checked at teardown).

Semantics are those of a local disk, a little stricter than GCS: a file's folder must exist
(epath's `mkdir(parents=True)` creates it), appends and renames are real.

Use (a test module; `tests/` is on `sys.path` under pytest's default import mode)::

    from fake_bucket import fake_bucket_fixture  # noqa: F401  (registers the fixture `fake_bucket` here)

    def test_x(fake_bucket):
        workdir = fake_bucket.uri("run")            # 'gs://fake-bucket/run'
        ...                                        # code under test writes there through epath
        assert fake_bucket.local("run/metrics.jsonl").exists()   # pathlib.Path of the stored object
        fake_bucket.assert_no_local_gs_dir()

A whole `train(config, workdir)` run against `fake_bucket.uri("run")` works the same way for every
writer that goes through epath; orbax checkpoints are written by TensorStore, which cannot see
this fake, so set the checkpoint directory to a local path (e.g. `tmp_path / "ckpt"`) for such a run.
Only `gs://` is faked; data paths given as local absolute paths are unaffected. The test's current
directory is an empty temporary folder, so relative paths in the code under test resolve there.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Iterator

import pytest
from etils.epath import backend as epath_backend
from etils.epath import gpath

__all__ = ["FakeBucket", "LocalBucketBackend", "fake_bucket_fixture"]

_SCHEME = "gs://"


class LocalBucketBackend(epath_backend.Backend):
    """epath backend that stores `gs://<bucket>/<key>` at `<root>/<bucket>/<key>` (other paths: as given)."""

    def __init__(self, root: os.PathLike | str):
        self.root = pathlib.Path(root)
        self._os = epath_backend.os_backend

    def to_local(self, path) -> str:
        """Local file-system path of `path` (`gs://` mapped under the root, others unchanged)."""
        path = os.fspath(path)
        if path.startswith(_SCHEME):
            key = path[len(_SCHEME):].strip("/")
            if not key:
                raise ValueError(f"{path!r} names no bucket")
            return os.fspath(self.root / key)
        return path

    def to_uri(self, local_path) -> str:
        """Inverse of `to_local` for paths under the root."""
        local_path = os.fspath(local_path)
        rel = os.path.relpath(local_path, self.root)
        if rel == os.pardir or rel.startswith(os.pardir + os.sep):
            return local_path
        return _SCHEME + rel.replace(os.sep, "/")

    def open(self, path, mode):
        return self._os.open(self.to_local(path), mode)

    def exists(self, path) -> bool:
        return self._os.exists(self.to_local(path))

    def isdir(self, path) -> bool:
        return self._os.isdir(self.to_local(path))

    def listdir(self, path) -> list[str]:
        return self._os.listdir(self.to_local(path))

    def glob(self, path) -> list[str]:
        is_uri = os.fspath(path).startswith(_SCHEME)
        found = self._os.glob(self.to_local(path))
        return [self.to_uri(p) for p in found] if is_uri else found

    def walk(self, top, *, top_down=True, on_error=None):
        is_uri = os.fspath(top).startswith(_SCHEME)
        for root, dirs, files in self._os.walk(self.to_local(top), top_down=top_down, on_error=on_error):
            yield (self.to_uri(root) if is_uri else root), dirs, files

    def makedirs(self, path, *, exist_ok=False, mode=None) -> None:
        self._os.makedirs(self.to_local(path), exist_ok=exist_ok, mode=mode)

    def mkdir(self, path, *, exist_ok=False, mode=None) -> None:
        self._os.mkdir(self.to_local(path), exist_ok=exist_ok, mode=mode)

    def rmtree(self, path) -> None:
        self._os.rmtree(self.to_local(path))

    def remove(self, path) -> None:
        self._os.remove(self.to_local(path))

    def rename(self, path, dst) -> None:
        self._os.rename(self.to_local(path), self.to_local(dst))

    def replace(self, path, dst) -> None:
        self._os.replace(self.to_local(path), self.to_local(dst))

    def copy(self, path, dst, overwrite) -> None:
        self._os.copy(self.to_local(path), self.to_local(dst), overwrite=overwrite)

    def stat(self, path):
        return self._os.stat(self.to_local(path))


@dataclasses.dataclass(frozen=True)
class FakeBucket:
    """The fake bucket of one test: `uri()` builds `gs://` paths, `local()` finds their files."""

    name: str
    root: pathlib.Path  # folder holding one sub-folder per bucket
    cwd: pathlib.Path  # the test's (empty) current directory
    backend: LocalBucketBackend

    def uri(self, key: str = "") -> str:
        """`gs://<name>/<key>`."""
        return f"{_SCHEME}{self.name}/{key.lstrip('/')}".rstrip("/")

    def local(self, key_or_uri: str = "") -> pathlib.Path:
        """Local path of a key of this bucket (or of any `gs://` uri)."""
        uri = key_or_uri if key_or_uri.startswith(_SCHEME) else self.uri(key_or_uri)
        return pathlib.Path(self.backend.to_local(uri))

    def files(self, key: str = "") -> list[str]:
        """Sorted keys (relative to `key`) of every file stored under `key`."""
        base = self.local(key)
        return sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())

    def assert_no_local_gs_dir(self) -> None:
        """Fails when something wrote a `gs://` path with builtin file functions (a `gs:` folder in cwd)."""
        stray = [p.name for p in self.cwd.iterdir() if p.name.startswith("gs:")]
        if stray:
            found = sorted(q.relative_to(self.cwd).as_posix() for p in self.cwd.glob("gs:*") for q in p.rglob("*"))
            raise AssertionError(f"a gs:// path was written with builtin file functions instead of etils.epath: "
                                 f"{stray} appeared in the current directory {self.cwd} (contents: {found[:10]})")


@pytest.fixture(name="fake_bucket")
def fake_bucket_fixture(tmp_path_factory: pytest.TempPathFactory,
                        monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBucket]:
    """`gs://fake-bucket/...` through etils.epath -> a local temporary folder, for this test.

    Also makes the current directory an empty temporary folder and, at teardown, fails the test if
    a `gs:` folder appeared there (a `gs://` path written with builtin `open`/`os.makedirs`).
    See the module docstring for use, e.g. a whole training run with a local checkpoint folder.
    """
    base = tmp_path_factory.mktemp("fake_gcs")
    root, cwd = base / "buckets", base / "cwd"
    bucket = FakeBucket("fake-bucket", root, cwd, LocalBucketBackend(root))
    (root / bucket.name).mkdir(parents=True)
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, "gs", bucket.backend)
    # With TensorFlow installed epath would send gs:// to tf.io.gfile (and ask GCS about the bucket).
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    # Renames/copies between a local and a gs:// path use the "GCS" side's backend, as in epath.
    monkeypatch.setattr(gpath, "_GCS_BACKENDS", frozenset({bucket.backend}))
    yield bucket
    bucket.assert_no_local_gs_dir()
