"""The availability answer (the node list, the summary, the Jupyter images and the cloud
offers in one document) and its version, made once per change instead of once per request.

A spawn form asks for it on every render and mostly gets a 304: the version is then all a
request needs, and it is kept while the published documents, the images and the offers are
the same objects. The body (about 1 MB at 1,000 nodes) is three parts, the published node
list sent as it is between a head and a tail, kept while the version and the freshness fields
are the same (while the watches are healthy the freshness changes only with a publication).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from .inventory import Published


def with_fields(fields: dict, cached: bytes) -> bytes:
    """The JSON object `cached` (bytes) with `fields` added in front."""
    extra = json.dumps(fields).encode()
    return b"{" + extra[1:-1] + (b"," + cached[1:] if cached != b"{}" else b"}")


def availability_version(content_digest: str, images_json: bytes, cloud_json: bytes) -> str:
    """Changes with the documents, the catalog and the cloud offers, not with time."""
    return hashlib.blake2b(
        content_digest.encode() + b"|" + images_json + b"|" + cloud_json, digest_size=12
    ).hexdigest()


def availability_parts(
    published: Published, fresh: dict, version: str, images_json: bytes, cloud_json: bytes
) -> tuple[bytes, bytes, bytes]:
    """The body as head, the published node list (the same bytes object) and tail."""
    head = json.dumps({**fresh, "version": version}).encode()[:-1] + b',"nodes":'
    tail = (
        b',"summary":'
        + with_fields(fresh, published.summary)
        + b',"images":'
        + images_json
        + b',"cloud":'
        + cloud_json
        + b"}"
    )
    return head, published.resources, tail


@dataclass(frozen=True)
class Versioned:
    """A version and what it was made from (held, so that `is` compares them)."""

    published: Published
    images_json: bytes
    cloud_json: bytes
    version: str
    etag: str  # the ETag header's value

    def made_from(self, published: Published, images_json: bytes, cloud_json: bytes) -> bool:
        return (
            published is self.published
            and images_json is self.images_json
            and cloud_json is self.cloud_json
        )


class AvailabilityAnswers:
    """The newest version and body of the availability answer."""

    def __init__(self) -> None:
        self._versioned: Versioned | None = None
        self._body: tuple[Versioned, tuple, tuple[bytes, bytes, bytes]] | None = None

    def versioned(self, published: Published, images_json: bytes, cloud_json: bytes) -> Versioned:
        held = self._versioned
        if held is not None and held.made_from(published, images_json, cloud_json):
            return held
        version = availability_version(published.content_digest, images_json, cloud_json)
        held = Versioned(published, images_json, cloud_json, version, f'"{version}"')
        self._versioned = held
        return held

    def body(self, versioned: Versioned, fresh: dict) -> tuple[bytes, bytes, bytes]:
        """The body's three parts; their lengths add up to the Content-Length."""
        key = tuple(fresh.items())
        held = self._body
        if held is not None and held[0] is versioned and held[1] == key:
            return held[2]
        parts = availability_parts(
            versioned.published,
            fresh,
            versioned.version,
            versioned.images_json,
            versioned.cloud_json,
        )
        self._body = (versioned, key, parts)
        return parts
