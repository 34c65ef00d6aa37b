"""Where the Pareto stage's weights live: an Optuna artifact store shared by every machine.

A store is named by one string, the ``artifact_store`` setting (``--artifact-store``): a folder
(:class:`optuna.artifacts.FileSystemArtifactStore`; a shared folder for a cluster) or
``s3://bucket[/prefix]`` (:class:`optuna.artifacts.Boto3ArtifactStore`; an S3-compatible
server through boto3's own ``AWS_ENDPOINT_URL``).

Optuna refuses to change a finished trial, and the Pareto stage runs after its trials have
finished, so each member's weights are a study artifact (``upload_artifact`` on the study,
named ``trial_<n>-model.safetensors``) and the member's Pareto-stage result (the study's
``final_<n>`` entry, where its fine-tuned accuracy lives too) holds the ``artifact_id``. The
dashboard lists them under the study's artifacts.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import optuna
from optuna.artifacts import (
    ArtifactMeta,
    FileSystemArtifactStore,
    download_artifact,
    get_all_artifact_meta,
    upload_artifact,
)
from optuna.artifacts.exceptions import ArtifactNotFound

from .._pruned import WEIGHTS_FILE
from ..errors import PrunetuneError
from ._record import final_of

__all__ = [
    "S3_SCHEME",
    "STORE_FOLDER",
    "check_store",
    "fetch_weights",
    "open_store",
    "parse_store",
    "stored_weights",
    "upload_weights",
    "weights_name",
]

S3_SCHEME = "s3://"
#: The default store: this folder inside the search's artifacts folder.
STORE_FOLDER = "optuna-artifacts"
#: S3's bucket naming rule (3-63 lowercase letters, digits, dots and hyphens).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_FORMS = "a folder, or s3://bucket[/prefix]"


def parse_store(spec: str) -> tuple[str, str, str]:
    """``(kind, where, prefix)`` of a store spec: ``("folder", path, "")`` or
    ``("s3", bucket, prefix)``; a malformed spec is a one-line error."""
    if not isinstance(spec, str) or not spec.strip():
        raise PrunetuneError(f"artifact store {spec!r} names nothing; give {_FORMS}")
    scheme, sep, rest = spec.partition("://")
    if not sep:
        return "folder", spec, ""
    if scheme != "s3":
        raise PrunetuneError(
            f"artifact store {spec!r}: unknown scheme {scheme + '://'!r}; give {_FORMS}"
        )
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise PrunetuneError(
            f"artifact store {spec!r} names no bucket; use s3://bucket or s3://bucket/prefix"
        )
    if not _BUCKET.fullmatch(bucket):
        raise PrunetuneError(
            f"artifact store {spec!r}: {bucket!r} is not an S3 bucket name (3 to 63 lowercase "
            f"letters, digits, '.' and '-')"
        )
    return "s3", bucket, prefix.strip("/")


class _Prefixed:
    """An artifact store whose keys all start with ``prefix/`` (``s3://bucket/prefix``)."""

    def __init__(self, store, prefix: str) -> None:
        self._store = store
        self._prefix = prefix + "/"

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self._store.open_reader(self._prefix + artifact_id)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self._store.write(self._prefix + artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self._store.remove(self._prefix + artifact_id)


def _folder(spec: str) -> Path:
    path = Path(spec).expanduser()
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                where = "is a file" if p == path else f"lies under {p}, which is a file"
                raise PrunetuneError(f"artifact store {spec} {where}; give a folder")
            break
    return path


def _boto3(spec: str):
    try:
        import boto3
    except ImportError:
        raise PrunetuneError(
            f"artifact store {spec} needs boto3, which is not installed: pip install boto3"
        ) from None
    return boto3


def _client_errors() -> tuple[type[BaseException], ...]:
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        return (OSError,)
    return (OSError, BotoCoreError, ClientError)


@contextmanager
def _store_errors(spec: str, doing: str):
    """Turns an I/O or S3 failure into a one-line error naming the store."""
    try:
        yield
    except _client_errors() as e:
        text = (getattr(e, "strerror", None) or str(e)).strip().splitlines()
        raise PrunetuneError(
            f"cannot {doing} artifact store {spec}: {text[0] if text else type(e).__name__}"
            + (
                "; check the bucket, AWS_ENDPOINT_URL and the AWS credentials"
                if spec.startswith(S3_SCHEME)
                else ""
            )
        ) from None


def open_store(spec: str, create: bool = False, must_exist: bool = False):
    """The Optuna artifact store ``spec`` names.

    Args:
        create: Make a folder store's folder (the Pareto stage, before it writes).
        must_exist: A folder store's folder must be there (a store the user named to read from).
    """
    kind, where, prefix = parse_store(spec)
    if kind == "folder":
        path = _folder(where)
        if create:
            with _store_errors(spec, "create"):
                path.mkdir(parents=True, exist_ok=True)
        elif must_exist and not path.is_dir():
            raise PrunetuneError(
                f"artifact store {spec} does not exist; give the folder the weights are in"
            )
        return FileSystemArtifactStore(path)
    _boto3(spec)
    from optuna.artifacts import Boto3ArtifactStore

    with _store_errors(spec, "open"):
        store = Boto3ArtifactStore(where)
    return _Prefixed(store, prefix) if prefix else store


def check_store(spec: str, writes: bool) -> None:
    """Fails in one line, before a search does any work, when its store cannot be used: a folder
    that is a file (or lies under one), boto3 missing; with ``writes`` (the search will run the
    Pareto stage) also a folder this user cannot write or an S3 bucket that does not answer."""
    kind, where, _ = parse_store(spec)
    if kind == "folder":
        path = _folder(where)
        there = next(p for p in (path, *path.parents, Path(".")) if p.exists())
        if writes and not os.access(there, os.W_OK | os.X_OK):
            raise PrunetuneError(
                f"artifact store {spec}: folder {there} is not writable; make it writable or "
                f"pass another --artifact-store"
            )
        return
    boto3 = _boto3(spec)
    if writes:
        with _store_errors(spec, "reach"):
            boto3.client("s3").head_bucket(Bucket=where)


def weights_name(number: int) -> str:
    """The artifact's file name: the trial it belongs to and the weights file's usual name."""
    return f"trial_{number}-{WEIGHTS_FILE}"


def upload_weights(study: optuna.Study, store, spec: str, number: int, path: Path) -> str:
    """Uploads the weights file ``path`` of trial ``number`` as a study artifact; its id."""
    named = path.with_name(weights_name(number))
    path.rename(named)
    with _store_errors(spec, "write to"):
        return upload_artifact(
            artifact_store=store,
            file_path=str(named),
            study_or_trial=study,
            mimetype="application/octet-stream",
        )


def stored_weights(study: optuna.Study, store, spec: str, number: int) -> ArtifactMeta | None:
    """The artifact of trial ``number``'s Pareto-stage weights, when its result names one that
    the study lists and ``store`` holds; else None."""
    artifact_id = (final_of(study, number) or {}).get("artifact_id")
    if not artifact_id:
        return None
    meta = next((m for m in get_all_artifact_meta(study) if m.artifact_id == artifact_id), None)
    if meta is None:
        return None
    with _store_errors(spec, "read"):
        try:
            store.open_reader(artifact_id).close()
        except ArtifactNotFound:
            return None
    return meta


def fetch_weights(store, spec: str, artifact_id: str, dest: Path) -> None:
    """Downloads one artifact to the file ``dest`` (which must not exist)."""
    with _store_errors(spec, "read"):
        download_artifact(artifact_store=store, file_path=str(dest), artifact_id=artifact_id)
