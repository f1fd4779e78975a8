"""A local folder and an S3 bucket behind one small interface. Writes are atomic:
locally a temp file renamed into place, on S3 a single PUT of the final key."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from stacchip_core.errors import ConfigError, ObjectError
from stacchip_core.io.settings import s3_endpoint
from stacchip_core.types import Store  # noqa: F401  (the protocol LocalStore and S3Store satisfy)


@dataclass
class LocalStore:
    """A local folder as a store (``open_store`` makes one for a path).

    Attributes:
        root: The folder; keys are paths relative to it.
    """

    root: Path

    def path(self, key: str) -> Path:
        """The local path of ``key``.

        Args:
            key: A key relative to the store's root.

        Returns:
            The path under ``root``.
        """
        return self.root / key

    def url(self, key: str) -> str:
        """The absolute local path of ``key``, as a string.

        Args:
            key: A key relative to the store's root.

        Returns:
            The resolved path.
        """
        return str(self.path(key).resolve())

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists.

        Args:
            key: A key relative to the store's root.

        Returns:
            True if a file or folder is at ``key``.
        """
        return self.path(key).exists()

    def read_bytes(self, key: str) -> bytes:
        """The content of ``key``.

        Args:
            key: A key relative to the store's root.

        Returns:
            The file's bytes.

        Raises:
            ObjectError: If there is no such file.
        """
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError as exc:
            raise ObjectError(f"no such file: {self.path(key)}") from exc

    def _publish(self, key: str, write) -> str:
        """``write(tmp_path)`` fills a temporary sibling, which is then renamed into place
        (mode from the umask; a name that says which host and process writes it: io.files)."""
        from stacchip_core.io.files import publishing

        with publishing(self.path(key)) as tmp:
            write(str(tmp))
        return self.url(key)

    def write_bytes(self, key: str, data: bytes) -> str:
        """Write ``data`` to ``key`` atomically.

        Args:
            key: A key relative to the store's root.
            data: The content.

        Returns:
            The written file's URL (its absolute path).
        """
        return self._publish(key, lambda tmp: Path(tmp).write_bytes(data))

    def put_file(self, key: str, path: str | Path) -> str:
        """Copy the local file ``path`` to ``key``, atomically.

        Args:
            key: A key relative to the store's root.
            path: The local file to copy.

        Returns:
            The copy's URL.
        """
        return self._publish(key, lambda tmp: shutil.copyfile(path, tmp))

    def remove_partial(self, prefix: str) -> int:
        """Delete temporary files that a killed writer left under ``prefix``; their rename
        never happened, so they are garbage. Only stale ones: a concurrent writer's
        temporary file stays (io.files.is_stale). Returns how many were removed.

        Args:
            prefix: The key prefix (a folder) to clean.

        Returns:
            The number of files removed.
        """
        from stacchip_core.io.files import remove_stale

        return remove_stale(self.path(prefix))

    def list(self, prefix: str = "", suffix: str = "") -> Iterator[str]:
        """The keys under ``prefix`` that end with ``suffix``, sorted (hidden files skipped).

        Args:
            prefix: A key prefix (a folder, or a single key).
            suffix: The ending the keys must have.

        Yields:
            The matching keys, relative to the store's root.
        """
        base = self.path(prefix)
        if base.is_file():
            yield prefix
            return
        if not base.exists():
            return
        for path in sorted(base.rglob(f"*{suffix}")):
            if path.is_file() and not path.name.startswith("."):
                yield path.relative_to(self.root).as_posix()


def s3_client(endpoint: str | None = None):
    """A boto3 S3 client that retries transient errors (8 attempts, standard mode).

    Args:
        endpoint: The S3 endpoint URL; default: the configured one (or AWS).

    Returns:
        The client.
    """
    import boto3  # deferred: boto3 is slow to import and only needed for s3://
    from botocore.config import Config

    # transient errors (throttling, 5xx, dropped connections) are retried with backoff
    config = Config(retries={"max_attempts": 8, "mode": "standard"})
    return boto3.client("s3", endpoint_url=endpoint or s3_endpoint(), config=config)


@dataclass
class S3Store:
    """An S3 bucket (or a prefix of one) as a store (``open_store`` makes one for an
    ``s3://`` URL).

    Attributes:
        bucket: The bucket.
        prefix: The key prefix the store's keys are relative to ("" for the bucket's root).
        endpoint: The S3 endpoint; None for the configured one (or AWS).
    """

    bucket: str
    prefix: str = ""
    endpoint: str | None = None  # None: the configured S3 endpoint (or AWS)

    def __post_init__(self) -> None:
        self.prefix = self.prefix.strip("/")
        self._client = None

    @property
    def client(self):
        """The store's boto3 S3 client, created on first use.
        """
        if self._client is None:
            self._client = s3_client(self.endpoint)
        return self._client

    def key(self, key: str) -> str:
        """The bucket key of ``key``: the store's prefix joined with it.

        Args:
            key: A key relative to the store's prefix.

        Returns:
            The full object key.
        """
        return f"{self.prefix}/{key}" if self.prefix else key

    def url(self, key: str) -> str:
        """The ``s3://`` URL of ``key``.

        Args:
            key: A key relative to the store's prefix.

        Returns:
            ``s3://{bucket}/{prefix}/{key}``.
        """
        return f"s3://{self.bucket}/{self.key(key)}"

    def exists(self, key: str) -> bool:
        """Whether the object ``key`` exists (one HEAD request).

        Args:
            key: A key relative to the store's prefix.

        Returns:
            True if the object exists, False on a 404.
        """
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def read_bytes(self, key: str) -> bytes:
        """The content of the object ``key``.

        Args:
            key: A key relative to the store's prefix.

        Returns:
            The object's bytes.

        Raises:
            ObjectError: If the object cannot be read.
        """
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.key(key))["Body"].read()
        except ClientError as exc:
            raise ObjectError(f"cannot read {self.url(key)}: {exc}") from exc

    def write_bytes(self, key: str, data: bytes) -> str:
        """Write ``data`` to ``key`` in one PUT (atomic: the object appears whole).

        Args:
            key: A key relative to the store's prefix.
            data: The content.

        Returns:
            The object's ``s3://`` URL.
        """
        self.client.put_object(Bucket=self.bucket, Key=self.key(key), Body=data)
        return self.url(key)

    def remove_partial(self, prefix: str) -> int:
        """Nothing to do: an S3 object appears whole or not at all (an interrupted
        multipart upload is not an object).

        Args:
            prefix: Unused: kept for the Store protocol.

        Returns:
            0.
        """
        return 0

    def put_file(self, key: str, path: str | Path) -> str:
        """Upload the local file ``path`` to ``key``.

        Args:
            key: A key relative to the store's prefix.
            path: The local file to upload.

        Returns:
            The object's ``s3://`` URL.
        """
        self.client.upload_file(str(path), self.bucket, self.key(key))
        return self.url(key)

    def list(self, prefix: str = "", suffix: str = "") -> Iterator[str]:
        """The keys under ``prefix`` that end with ``suffix``, sorted.

        Args:
            prefix: A key prefix relative to the store's prefix.
            suffix: The ending the keys must have.

        Yields:
            The matching keys, relative to the store's prefix.
        """
        full = self.key(prefix)
        paginator = self.client.get_paginator("list_objects_v2")
        keys = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            for obj in page.get("Contents", []):
                if obj["Key"].endswith(suffix):
                    keys.append(obj["Key"][len(self.prefix) + 1 :] if self.prefix else obj["Key"])
        yield from sorted(keys)


def open_store(location: str | Path, endpoint: str | None = None) -> LocalStore | S3Store:
    """A store for ``s3://bucket[/prefix]`` (at ``endpoint``, default the configured one)
    or a local folder (path or file://).

    Args:
        location: ``s3://bucket[/prefix]``, a file:// URL or a folder path.
        endpoint: The S3 endpoint for an ``s3://`` location; default: the configured one.

    Returns:
        The store.

    Raises:
        ConfigError: If the location's scheme is not supported.
    """
    location = str(location)
    url = urlparse(location)
    if url.scheme == "s3":
        return S3Store(url.netloc, url.path, endpoint)
    if url.scheme == "file":
        return LocalStore(Path(url.path))
    if url.scheme == "" or len(url.scheme) == 1:  # a path (or a Windows drive letter)
        return LocalStore(Path(location))
    raise ConfigError(f"unsupported store location {location!r} (use a folder or s3://bucket/prefix)")


def read_url(url: str, endpoint: str | None = None) -> bytes:
    """The bytes at a local path, file://, s3://, http(s)://, gs:// or az:// URL, through the
    one object layer (io.objects: obstore, or its fork-safe transport in a process forked
    after obstore ran). ``endpoint`` overrides the configured S3 endpoint (boto3, as before).

    Args:
        url: A local path or a file://, s3://, http(s)://, gs:// or az:// URL.
        endpoint: An S3 endpoint to use instead of the configured one.

    Returns:
        The object's bytes.

    Raises:
        ObjectError: If the object does not exist or cannot be read.
    """
    from stacchip_core.errors import ObjectError
    from stacchip_core.io import objects

    parsed = urlparse(url)
    if parsed.scheme == "s3" and endpoint:
        return S3Store(parsed.netloc, endpoint=endpoint).read_bytes(parsed.path.lstrip("/"))
    try:
        return objects.get_bytes(url)
    except ObjectError as exc:
        if parsed.scheme in ("", "file") and "not found" in str(exc):
            path = Path(parsed.path if parsed.scheme == "file" else url)
            raise ObjectError(f"no such file: {path}") from None
        raise
