"""The one path layer: local paths and ``gs://`` alike, through ``etils.epath`` (fsspec / gcsfs for ``gs://``).

The first thing to know: every path a user gives goes through ``check`` at the entry point. Local paths and
``gs://bucket/...`` pass (local ones made absolute); any other scheme (``s3://``, ``hdfs://``) is a one-line
``UserError``, so no path ever becomes a local folder named after its scheme (``./gs:/bucket``). Checkpoints go
through orbax / tensorstore, which take the same strings; files through ``epath``; code that needs a local file
(a tokenizer for ``transformers``, a token shard for ``pread``) asks ``local_copy``.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
from typing import Iterator

from instructor_jax.core.errors import UserError

SUPPORTED = ("gs",)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):/")
KEEP = ".keep"                        # an empty folder's marker object on Cloud Storage
CACHE_ENV = "INSTRUCTOR_JAX_CACHE"   # where gs:// files needed locally are kept (default ~/.cache/instructor_jax)


class PathError(UserError, ValueError):
  """A path in a scheme the project cannot handle, or a malformed gs:// path."""


def scheme(path: str) -> str:
  """``"gs"`` for ``gs://...``, ``""`` for a local path, the scheme of any other URL."""
  m = _SCHEME.match(os.fspath(path))
  return m.group(1).lower() if m else ""


def is_gcs(path) -> bool:
  return scheme(os.fspath(path)) == "gs"


def check(path, what: str = "path") -> str:
  """``path`` normalised (local: absolute; gs://: no trailing slash), or a ``PathError`` naming ``what``."""
  path = os.fspath(path)
  s = scheme(path)
  if not s:
    try:
      path.encode("utf-8")
    except UnicodeEncodeError:
      raise PathError(f"{what} {path!r}: not valid UTF-8; choose a path whose name is text") from None
    return os.path.abspath(os.path.expanduser(path))
  if s not in SUPPORTED:
    raise PathError(f"{what} {path}: the {s}:// scheme is not supported (local paths and gs:// are); copy the "
                    f"data to a local folder or to Cloud Storage")
  if not path.startswith("gs://") or len(path) <= 5 or path[5] == "/":
    raise PathError(f"{what} {path}: expected gs://BUCKET/PATH")
  return path.rstrip("/") if path.count("/") > 2 else path


def join(base: str, *parts: str) -> str:
  if is_gcs(base):
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
  return os.path.join(base, *parts)


def basename(path: str) -> str:
  return path.rstrip("/").rsplit("/", 1)[-1] if is_gcs(path) else os.path.basename(path)


def dirname(path: str) -> str:
  return path.rstrip("/").rsplit("/", 1)[0] if is_gcs(path) else os.path.dirname(path)


_configured = False


def epath(path):
  """``etils.epath.Path`` for ``path`` (imported lazily: the data tools stay light). gcsfs's listing cache is
  off: a trainer polls folders that other processes write (steps, the lock, metrics), and a cached listing would
  hide them."""
  global _configured
  if not _configured:  # once per process, before the first gs:// filesystem is made
    import fsspec
    for protocol in ("gs", "gcs"):
      fsspec.config.conf.setdefault(protocol, {})["use_listings_cache"] = False
    _configured = True
  from etils import epath as ep
  return ep.Path(path)


def exists(path: str) -> bool:
  return epath(path).exists() if is_gcs(path) else os.path.exists(path)


def isdir(path: str) -> bool:
  return epath(path).is_dir() if is_gcs(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
  return epath(path).is_file() if is_gcs(path) else os.path.isfile(path)


def listdir(path: str) -> list[str]:
  if is_gcs(path):
    p = epath(path)
    try:
      return sorted(c.name for c in p.iterdir()) if p.is_dir() else []
    except FileNotFoundError:  # the prefix's last object went away between the two calls: an empty folder now
      return []
  return sorted(os.listdir(path))


def makedirs(path: str) -> None:
  if is_gcs(path):
    return  # Cloud Storage has no folders: a prefix exists once an object is written under it
  os.makedirs(path, exist_ok=True)


def rmtree(path: str) -> None:
  if is_gcs(path):
    p = epath(path)
    if p.exists():
      p.rmtree()
  else:
    shutil.rmtree(path, ignore_errors=True)


def remove(path: str) -> None:
  if is_gcs(path):
    p = epath(path)
    if p.exists():
      p.unlink()
  elif os.path.exists(path):
    os.remove(path)


def rename(src: str, dst: str) -> None:
  """A folder or file rename; on gs:// (no rename) a copy of every object, then the source is deleted."""
  if is_gcs(src):
    epath(src).rename(epath(dst))
  else:
    os.rename(src, dst)


def open_file(path: str, mode: str = "r"):
  return epath(path).open(mode) if is_gcs(path) else open(path, mode, **({} if "b" in mode else
                                                                          {"encoding": "utf-8"}))


def read_text(path: str) -> str:
  with open_file(path) as f:
    return f.read()


def read_bytes(path: str) -> bytes:
  with open_file(path, "rb") as f:
    return f.read()


def walk_files(path: str) -> Iterator[str]:
  """Every file under ``path``, as paths relative to it (sorted)."""
  if is_gcs(path):
    root = epath(path)
    bare = str(root).split("://", 1)[-1].rstrip("/")   # epath's walk may drop the scheme
    for dirpath, _, names in root.walk():
      d = str(dirpath).split("://", 1)[-1].rstrip("/")
      rel = d[len(bare):].strip("/") if d.startswith(bare) else ""
      for n in sorted(names):
        yield f"{rel}/{n}" if rel else n
  else:
    for dirpath, _, names in sorted(os.walk(path)):
      rel = os.path.relpath(dirpath, path)
      for n in sorted(names):
        yield n if rel == "." else os.path.join(rel, n)


def cache_dir() -> str:
  return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "instructor_jax")


def generations(path: str) -> str:
  """A digest of what a gs:// file or folder holds now: every object's name, generation and size (one listing)."""
  import fsspec
  epath(path)  # the filesystem settings
  fs = fsspec.filesystem("gs")
  found = fs.find(path, detail=True) or {path: fs.info(path)}
  h = hashlib.sha256()
  for name in sorted(found):
    h.update(f"{name}\0{found[name].get('generation')}\0{found[name].get('size')}\0".encode())
  return h.hexdigest()[:16]


def local_copy(path: str, refresh: bool = False, key: str = "") -> str:
  """A local path with ``path``'s content: ``path`` itself when local; for gs:// a copy in ``cache_dir()`` (a file
  or a whole folder), keyed by the objects' generations (``key`` overrides), so a rewritten object is fetched
  again; downloaded into a temporary name and renamed, so a partial copy is never used."""
  if not is_gcs(path):
    return path
  key = hashlib.sha256(f"{path}\0{key or generations(path)}".encode()).hexdigest()[:16]
  dest = os.path.join(cache_dir(), "gcs", key, basename(path))
  if os.path.exists(dest) and not refresh:
    return dest
  os.makedirs(os.path.dirname(dest), exist_ok=True)
  tmp = f"{dest}.partial-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  if isdir(path):
    for rel in walk_files(path):
      target = os.path.join(tmp, rel)
      os.makedirs(os.path.dirname(target), exist_ok=True)
      epath(join(path, rel)).copy(target, overwrite=True)
  else:
    epath(path).copy(tmp, overwrite=True)
  if os.path.exists(dest):
    shutil.rmtree(dest, ignore_errors=True) if os.path.isdir(dest) else os.remove(dest)
  os.rename(tmp, dest)
  return dest


def upload(local: str, dest: str, last: tuple[str, ...] = ()) -> None:
  """Copies a local file or folder to ``dest`` (gs:// or local); the relative paths in ``last`` go last, so a
  reader that requires them (a manifest, a commit marker) never sees a partial folder."""
  if os.path.isfile(local):
    epath(local).copy(dest, overwrite=True) if is_gcs(dest) else shutil.copyfile(local, dest)
    return
  for dirpath, dirs, names in os.walk(local):  # Cloud Storage has no empty folders: keep them with a marker
    if not dirs and not names:
      open(os.path.join(dirpath, KEEP), "w").close()
  rels = list(walk_files(local))
  for rel in [r for r in rels if r not in last] + [r for r in last if r in rels]:
    target = join(dest, *rel.split(os.sep))
    if is_gcs(dest):
      epath(os.path.join(local, rel)).copy(target, overwrite=True)
    else:
      os.makedirs(os.path.dirname(target), exist_ok=True)
      shutil.copyfile(os.path.join(local, rel), target)
