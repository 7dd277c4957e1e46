"""S3 blob store: blobs as objects in one bucket of any S3-compatible server.

Tested against SeaweedFS; written for AWS S3, MinIO, Ceph RGW and the like (path-style
addressing, no AWS-only features).

Writes:

* A blob of at most one part (``part_size``, 8 MiB) is read into memory, hashed and sent
  with a single ``PutObject`` carrying the SHA-256 both as ``x-amz-meta-sha256`` and as
  ``x-amz-checksum-sha256``, so a server that knows the header checks the bytes it received.
* A larger blob is streamed as a multipart upload (a few parts in flight, so memory stays at
  a few parts whatever the blob size) to a temporary key under ``<prefix>.tmp/``. Its SHA-256
  is only known at the end, and S3 metadata cannot be changed after an object is written, so
  the object is then copied server-side to the real key with the metadata, and the temporary
  object deleted. The real key therefore appears atomically, complete and with its metadata;
  a failed ``put`` leaves the previous blob (if any) untouched.

``put`` returns only after the server acknowledged the final object. Keys follow the rules of
the file store (no empty, ``.`` or ``..`` segments, no leading ``.`` or ``/``), so every key is
valid in both backends and ``.tmp/`` cannot collide with a blob.

Every botocore failure is raised as ``cloudfilm.core.errors.StorageFailure`` (or ``NotFound``
for a missing blob); messages name the endpoint, bucket and key but never the credentials.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import threading
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, BinaryIO, cast
from urllib.parse import urlsplit

import boto3
import urllib3.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from cloudfilm.core.errors import CloudFilmError, NotFound, OutOfResources, StorageFailure
from cloudfilm.storage.base import BlobInfo

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

    from cloudfilm.core.config import Settings

log = logging.getLogger(__name__)

#: Size of a multipart part, and the largest blob sent with a single PutObject.
PART_SIZE = 8 * 1024 * 1024
#: Parts uploaded at the same time (a put holds at most ``UPLOAD_CONCURRENCY + 1`` parts).
UPLOAD_CONCURRENCY = 4
#: Object metadata key holding the SHA-256 hex digest (sent as ``x-amz-meta-sha256``).
SHA256_METADATA = "sha256"
#: Folder, below the prefix, of the temporary objects of multipart uploads in progress.
TMP_FOLDER = ".tmp/"

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_DENIED_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "Forbidden"}
)
_FULL_CODES = frozenset({"XMinioStorageFull", "QuotaExceeded", "InsufficientStorage"})
_READ_BUFFER = 256 * 1024


class S3BlobStore:
    """Blobs as objects named ``<prefix><key>`` in ``bucket``; thread-safe."""

    def __init__(
        self,
        *,
        endpoint: str,
        bucket: str,
        access_key: str | None,
        secret_key: str | None,
        region: str = "us-east-1",
        prefix: str = "",
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_attempts: int = 5,
        part_size: int = PART_SIZE,
    ) -> None:
        """Describe the store; no request is made until the first operation.

        ``access_key``/``secret_key`` of None fall back to boto3's usual credential chain
        (``AWS_ACCESS_KEY_ID``, ``~/.aws/credentials``, instance roles). The bucket is created
        on first use if it does not exist. ``prefix`` (a folder, ``/`` added) is prepended to
        every key. ``connect_timeout`` and ``read_timeout`` are per request, in seconds;
        ``max_attempts`` is how often each request is tried in all (with backoff between
        tries); ``part_size`` is the multipart part size (at least 5 MiB).
        """
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the S3 endpoint must be an http:// or https:// URL")
        if parts.username is not None or parts.password is not None:
            # Refuse rather than echo: the URL would end up in error messages and logs.
            raise ValueError(
                "the S3 endpoint URL must not contain credentials; use the access and secret key"
            )
        if (access_key is None) != (secret_key is None):
            raise ValueError("give both the S3 access key and the secret key, or neither")
        if part_size < 5 * 1024 * 1024:
            raise ValueError("S3 multipart parts must be at least 5 MiB")
        if max_attempts < 1:
            raise ValueError("max_attempts must be 1 or more")
        self.endpoint = endpoint.rstrip("/")
        self.bucket = bucket
        self.region = region
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.part_size = part_size
        config = Config(
            region_name=region,
            s3={"addressing_style": "path"},
            # botocore's "max_attempts" counts retries (1 means two tries); the total is wanted.
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max(10, 2 * UPLOAD_CONCURRENCY),
            # Only send/verify the checksums an operation requires (and the SHA-256 we give
            # ourselves): the newer default CRC trailers are not understood by every server.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._client: Any = _new_client(
            endpoint_url=self.endpoint,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region,
            config=config,
        )
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> S3BlobStore:
        """The store described by ``CLOUDFILM_S3_*`` settings."""
        if not settings.s3_endpoint:
            raise ValueError("CLOUDFILM_STORAGE=s3 needs CLOUDFILM_S3_ENDPOINT")
        return cls(
            endpoint=settings.s3_endpoint,
            bucket=settings.s3_bucket,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            region=settings.s3_region,
        )

    def __repr__(self) -> str:
        return (
            f"S3BlobStore(endpoint={self.endpoint!r}, bucket={self.bucket!r}, "
            f"prefix={self.prefix!r})"
        )

    # -- the BlobStore protocol ------------------------------------------------------------

    def put(self, key: str, source: BinaryIO) -> BlobInfo:
        name = self._name(key)
        self.ensure_bucket()
        try:
            return self._put(name, key, _HashingReader(source))
        except OSError as exc:  # reading the source failed (botocore errors are translated)
            raise StorageFailure(f"cannot write blob {key}: {exc}") from exc

    def _put(self, name: str, key: str, reader: _HashingReader) -> BlobInfo:
        # Read up to two parts: one part or less goes in a single PutObject.
        head = [_read_full(reader, self.part_size)]
        if len(head[0]) == self.part_size:
            head.append(_read_full(reader, self.part_size))
        if len(head) == 1 or not head[1]:
            info = reader.info()
            with self._errors("put", key):
                self._client.put_object(
                    Bucket=self.bucket,
                    Key=name,
                    Body=head[0],
                    ContentType="application/octet-stream",
                    Metadata={SHA256_METADATA: info.sha256},
                    ChecksumSHA256=base64.b64encode(reader.digest()).decode("ascii"),
                )
            return info
        tmp = f"{self.prefix}{TMP_FOLDER}{uuid.uuid4().hex}"
        try:
            self._upload_multipart(tmp, key, reader, head)
            info = reader.info()
            with self._errors("put", key):
                self._client.copy(
                    {"Bucket": self.bucket, "Key": tmp},
                    self.bucket,
                    name,
                    ExtraArgs={
                        "Metadata": {SHA256_METADATA: info.sha256},
                        "MetadataDirective": "REPLACE",
                        "ContentType": "application/octet-stream",
                    },
                    # One CopyObject up to 1 GiB; above, a multipart copy in 256 MiB parts.
                    Config=TransferConfig(
                        multipart_threshold=1024**3,
                        multipart_chunksize=256 * 1024**2,
                        max_concurrency=UPLOAD_CONCURRENCY,
                    ),
                )
        finally:
            self._discard(tmp)
        return info

    def open(self, key: str) -> BinaryIO:
        name = self._name(key)
        self.ensure_bucket()
        with self._errors("open", key):
            response = self._client.get_object(Bucket=self.bucket, Key=name)
        return _reader(_BodyReader(response["Body"], key))

    def open_range(self, key: str, start: int, end: int | None = None) -> BinaryIO:
        if start < 0:
            raise ValueError("a range starts at 0 or later")
        name = self._name(key)
        self.ensure_bucket()
        if end is not None and end <= start:
            if not self.exists(key):
                raise NotFound(f"blob {key} is missing")
            return io.BytesIO(b"")
        header = f"bytes={start}-" if end is None else f"bytes={start}-{end - 1}"
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=name, Range=header)
        except ClientError as exc:
            if _error_code(exc) == "InvalidRange":  # 416: start at or after the end
                return io.BytesIO(b"")
            raise self._translate(exc, "open", key) from exc
        except BotoCoreError as exc:
            raise self._translate(exc, "open", key) from exc
        if response.get("ContentRange"):
            return _reader(_BodyReader(response["Body"], key))
        # A server that ignored the Range header sent the whole object: cut it here.
        limit = None if end is None else end - start
        return _reader(_BodyReader(response["Body"], key, skip=start, limit=limit))

    def delete(self, key: str) -> None:
        name = self._name(key)
        self.ensure_bucket()
        try:
            with self._errors("delete", key):
                self._client.delete_object(Bucket=self.bucket, Key=name)
        except NotFound:
            return  # most servers answer 204 for a missing key; some say NoSuchKey

    def exists(self, key: str) -> bool:
        name = self._name(key)
        self.ensure_bucket()
        try:
            with self._errors("check", key):
                self._client.head_object(Bucket=self.bucket, Key=name)
        except NotFound:
            return False
        return True

    def keys(self) -> Iterator[str]:
        """Every key, sorted.

        S3 lists keys in byte order, but some compatible servers (SeaweedFS among them) list
        folder by folder (``a/b/c`` before ``a-b``), so the keys are gathered and sorted here:
        memory grows with the number of blobs (about 100 bytes a key).
        """
        self.ensure_bucket()
        found: list[str] = []
        skip = self.prefix + TMP_FOLDER
        with self._errors("list", None):
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for item in page.get("Contents", ()):
                    name = str(item["Key"])
                    if not name.startswith(skip) and not name.endswith("/"):
                        found.append(name[len(self.prefix) :])
        found.sort()
        yield from found

    # -- maintenance ------------------------------------------------------------------------

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (done once, before the first operation)."""
        if self._bucket_ready:
            return
        with self._bucket_lock:
            if self._bucket_ready:
                return
            try:
                self._client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if _error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                    raise self._translate(exc, "check bucket", None) from exc
                self._create_bucket()
            except BotoCoreError as exc:
                raise self._translate(exc, "check bucket", None) from exc
            self._bucket_ready = True

    def clean_temporary(self) -> int:
        """Remove temporary objects and unfinished uploads left by interrupted ``put`` calls.

        Returns how many were removed. Call it when no ``put`` is running (e.g. at startup).
        """
        self.ensure_bucket()
        tmp = self.prefix + TMP_FOLDER
        count = 0
        with self._errors("clean temporary objects", None):
            for page in self._client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=tmp
            ):
                for upload in page.get("Uploads", ()):
                    self._client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    count += 1
            for page in self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=tmp
            ):
                for item in page.get("Contents", ()):
                    self._client.delete_object(Bucket=self.bucket, Key=item["Key"])
                    count += 1
        return count

    # -- internals --------------------------------------------------------------------------

    def _name(self, key: str) -> str:
        segments = key.split("/")
        if not key or key.startswith(".") or any(s in ("", ".", "..") for s in segments):
            raise ValueError(f"invalid blob key {key!r}")
        return self.prefix + key

    def _create_bucket(self) -> None:
        arguments: dict[str, Any] = {"Bucket": self.bucket}
        if self.region != "us-east-1":
            arguments["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._client.create_bucket(**arguments)
        except ClientError as exc:
            if _error_code(exc) == "BucketAlreadyOwnedByYou":  # created meanwhile
                return
            raise self._translate(exc, "create bucket", None) from exc
        except BotoCoreError as exc:
            raise self._translate(exc, "create bucket", None) from exc
        log.info("created S3 bucket %s at %s", self.bucket, self.endpoint)

    def _upload_multipart(
        self, tmp: str, key: str, reader: _HashingReader, head: list[bytes]
    ) -> None:
        """Upload ``head`` (parts already read, consumed) then the rest of ``reader`` to ``tmp``.

        Parts are read in this thread and sent by a small pool; at most
        ``UPLOAD_CONCURRENCY`` are in flight, so memory stays bounded whatever the size.
        """

        def next_part() -> bytes:
            return head.pop(0) if head else _read_full(reader, self.part_size)

        with self._errors("put", key):
            upload_id = str(
                self._client.create_multipart_upload(
                    Bucket=self.bucket, Key=tmp, ContentType="application/octet-stream"
                )["UploadId"]
            )
        try:
            etags: list[dict[str, Any]] = []
            pool = ThreadPoolExecutor(UPLOAD_CONCURRENCY, "s3-upload")
            try:
                pending: deque[tuple[int, Future[Any]]] = deque()
                number, data = 1, next_part()
                while data:
                    if len(pending) >= UPLOAD_CONCURRENCY:  # bound the parts held in memory
                        etags.append(self._part_done(*pending.popleft(), key))
                    future = pool.submit(self._upload_part, tmp, upload_id, number, data)
                    pending.append((number, future))
                    data = next_part()
                    number += 1
                while pending:
                    etags.append(self._part_done(*pending.popleft(), key))
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
            with self._errors("put", key):
                self._client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=tmp,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": etags},
                )
        except BaseException:
            try:
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=tmp, UploadId=upload_id)
            except (BotoCoreError, ClientError) as exc:
                log.warning("cannot abort the S3 upload of %s: %s", key, type(exc).__name__)
            raise

    def _upload_part(self, tmp: str, upload_id: str, number: int, data: bytes) -> Any:
        return self._client.upload_part(
            Bucket=self.bucket, Key=tmp, UploadId=upload_id, PartNumber=number, Body=data
        )

    def _part_done(self, number: int, future: Future[Any], key: str) -> dict[str, Any]:
        with self._errors("put", key):
            response = future.result()
        return {"PartNumber": number, "ETag": response["ETag"]}

    def _discard(self, name: str) -> None:
        """Delete a temporary object, logging (not raising) a failure."""
        try:
            self._client.delete_object(Bucket=self.bucket, Key=name)
        except (BotoCoreError, ClientError) as exc:
            log.warning("cannot delete temporary S3 object %s: %s", name, type(exc).__name__)

    @contextmanager
    def _errors(self, action: str, key: str | None) -> Iterator[None]:
        try:
            yield
        except (BotoCoreError, ClientError) as exc:
            raise self._translate(exc, action, key) from exc

    def _translate(self, exc: Exception, action: str, key: str | None) -> CloudFilmError:
        what = f"{action} {key}" if key is not None else action
        where = f"bucket {self.bucket} at {self.endpoint}"
        if isinstance(exc, ClientError):
            code = _error_code(exc)
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            message = exc.response.get("Error", {}).get("Message") or ""
            if key is not None and code in _NOT_FOUND_CODES:
                return NotFound(f"blob {key} is missing")
            if code in ("NoSuchBucket", "NotFound", "404"):
                return StorageFailure(f"S3 {what} failed: {where} does not exist")
            if code in _DENIED_CODES or status == 403:
                return StorageFailure(
                    f"S3 {what} refused by {where} ({code}): check the access key, secret "
                    "key and permissions"
                )
            if code in _FULL_CODES or status == 507:
                return OutOfResources(f"S3 {what} failed: {where} is full ({code})")
            return StorageFailure(f"S3 {what} failed at {where}: {code} {message}".rstrip())
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return StorageFailure(f"S3 {what} failed: no S3 access key and secret key configured")
        if isinstance(exc, BotoConnectionError):
            return StorageFailure(
                f"S3 {what} failed: cannot connect to {self.endpoint} ({type(exc).__name__})"
            )
        if isinstance(exc, HTTPClientError):
            return StorageFailure(
                f"S3 {what} failed: connection to {self.endpoint} broke ({type(exc).__name__})"
            )
        return StorageFailure(f"S3 {what} failed at {where}: {type(exc).__name__}")


_session: Any = None
_session_lock = threading.Lock()


def _new_client(**options: Any) -> Any:
    """An S3 client from one shared boto3 session (which caches the parsed API models).

    Sessions are not thread-safe, so clients are made under a lock; clients themselves are.
    """
    global _session
    with _session_lock:
        if _session is None:
            _session = boto3.session.Session()
        return _session.client("s3", **options)


def _error_code(exc: BaseException | None) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def _read_full(source: _HashingReader, size: int) -> bytes:
    """Read ``size`` bytes, fewer only at the end of the stream."""
    chunks: list[bytes] = []
    left = size
    while left > 0:
        chunk = source.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class _HashingReader:
    """Reads a source once, counting and hashing what passes through."""

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self._digest = hashlib.sha256()
        self._size = 0

    def read(self, size: int) -> bytes:
        chunk = self._source.read(size)
        if chunk:
            self._digest.update(chunk)
            self._size += len(chunk)
        return chunk or b""

    def digest(self) -> bytes:
        return self._digest.digest()

    def info(self) -> BlobInfo:
        return BlobInfo(size=self._size, sha256=self._digest.hexdigest())


class _BodyReader(io.RawIOBase):
    """A botocore ``StreamingBody`` as a raw binary stream; read errors become StorageFailure.

    ``skip`` and ``limit`` cut a range out of a body that holds the whole object.
    """

    def __init__(self, body: Any, key: str, *, skip: int = 0, limit: int | None = None) -> None:
        super().__init__()
        self._body = body
        self._key = key
        self._skip = skip
        self._left = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        size = len(view) if self._left is None else min(len(view), self._left)
        if size == 0:
            return 0
        try:
            while self._skip:
                dropped = self._body.read(min(self._skip, _READ_BUFFER))
                if not dropped:
                    return 0
                self._skip -= len(dropped)
            data = self._body.read(size)
        except (BotoCoreError, urllib3.exceptions.HTTPError, OSError) as exc:
            raise StorageFailure(
                f"reading blob {self._key} from S3 failed ({type(exc).__name__})"
            ) from exc
        view[: len(data)] = data
        if self._left is not None:
            self._left -= len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self._body.close()
            finally:
                super().close()


def _reader(raw: _BodyReader) -> BinaryIO:
    """Buffer a body so that ``read(n)`` returns ``n`` bytes until the end, like a file."""
    return cast(BinaryIO, io.BufferedReader(raw, buffer_size=_READ_BUFFER))
