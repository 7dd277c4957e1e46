"""One error hierarchy, with one table mapping each error to HTTP and DIMSE statuses.

DIMSE C-STORE statuses follow PS3.4 B.2.3 (0xA7xx out of resources, 0xA9xx data set does not
match SOP class, 0xCxxx cannot understand); STOW-RS failure reasons use the same codes
(PS3.18 Table I.2-2).
"""

from __future__ import annotations


class CloudFilmError(Exception):
    """Base of every error cloudfilm raises on purpose."""

    #: HTTP status for the error.
    status: int = 500
    #: C-STORE failure status (PS3.4 B.2.3) and STOW-RS FailureReason.
    dimse_status: int = 0x0110  # processing failure
    #: A short machine-readable code.
    code: str = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidDicom(CloudFilmError):
    """The data cannot be parsed as DICOM, or lacks what identifies it."""

    status = 400
    dimse_status = 0xC000  # cannot understand
    code = "invalid-dicom"


class MissingIdentifier(InvalidDicom):
    """Readable DICOM without SOP Class/Instance, Study or Series UID."""

    dimse_status = 0xA900  # data set does not match SOP class (required attribute missing)
    code = "missing-identifier"


class InvalidQuery(CloudFilmError):
    """A query key or parameter with a malformed value (a bad date range, say)."""

    status = 400
    dimse_status = 0xA900  # C-FIND: identifier does not match SOP class (PS3.4 C.4.1.1.4)
    code = "invalid-query"


class NotFound(CloudFilmError):
    status = 404
    code = "not-found"


class Conflict(CloudFilmError):
    """A known SOP Instance UID arrived with another patient, study or series."""

    status = 409
    dimse_status = 0xC001  # documented in docs/archive.md: cannot understand, identity conflict
    code = "conflict"


class NotAcceptable(CloudFilmError):
    """The representation asked for cannot be produced: a transfer syntax we cannot transcode
    to, a media type we cannot render, pixel data we cannot decode (PS3.18 8.7.3.5: 406)."""

    status = 406
    dimse_status = 0xC000  # cannot understand (no presentation we can produce)
    code = "not-acceptable"


class Forbidden(CloudFilmError):
    status = 403
    code = "forbidden"


class Unauthorized(CloudFilmError):
    """Something must be proven first: a share link whose access code or patient check has
    not been passed in this browser."""

    status = 401
    code = "unauthorized"


class Gone(CloudFilmError):
    """The resource is no longer available: an expired or revoked share link."""

    status = 410
    code = "gone"


class TooManyAttempts(CloudFilmError):
    """Too many wrong access codes: locked for a while (HTTP 429)."""

    status = 429
    code = "too-many-attempts"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        #: Seconds until another attempt is accepted.
        self.retry_after = retry_after


class TooLarge(CloudFilmError):
    status = 413
    dimse_status = 0xA700  # out of resources
    code = "too-large"


class OutOfResources(CloudFilmError):
    """The disk is at its configured free-space floor, or storage failed."""

    status = 507
    dimse_status = 0xA700
    code = "out-of-resources"


class StorageFailure(CloudFilmError):
    """Writing a blob or committing the index failed; nothing was kept."""

    status = 503
    dimse_status = 0xA700
    code = "storage-failure"


class MalformedRequest(CloudFilmError):
    """An HTTP request that cannot be understood: broken multipart framing, bad parameters."""

    status = 400
    dimse_status = 0xC000
    code = "malformed-request"


class Unprocessable(CloudFilmError):
    """A well-formed request that names something the data cannot give: a series not in the
    study, more images than a film layout holds (HTTP 422)."""

    status = 422
    dimse_status = 0xC000
    code = "unprocessable"


class UnsupportedMediaType(CloudFilmError):
    """A request body of a media type the resource does not accept (HTTP 415)."""

    status = 415
    dimse_status = 0xC000
    code = "unsupported-media-type"


class StudyMismatch(CloudFilmError):
    """A STOW-RS instance whose Study Instance UID is not the one named in the URL."""

    status = 409
    dimse_status = 0xA901  # data set does not match: study (as Microsoft's DICOM service)
    code = "study-mismatch"
