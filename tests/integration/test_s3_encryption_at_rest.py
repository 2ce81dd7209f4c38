"""Encryption at rest of the object store (issue #16 item 5), on the stack `rscf up` started.

An object holding a random marker is written through the S3 API and read back intact; no file of the
store's data dir (volume files, the filer's store) holds the marker. The same search on a private plain
`weed mini` finds it, so the search itself can fail.
"""

from __future__ import annotations

import io
import uuid

import pytest

from rscf.s3 import s3_client
from rscf.settings import SETTINGS
from tools.s3_encryption_bench import BUCKET, PrivateWeed, files_holding, marker_object

pytestmark = pytest.mark.integration


def test_the_search_finds_plaintext_in_a_store_without_encryption():
    marker, body = marker_object(16_384)
    with PrivateWeed(encrypt=False) as weed:
        weed.client().put_object(BUCKET, "plain", io.BytesIO(body), len(body))
        assert any(f.endswith(".dat") for f in weed.files_holding(marker))


@pytest.mark.skipif(not SETTINGS.s3.encrypt_at_rest, reason="RSCF_S3_ENCRYPT_AT_REST=0")
def test_the_stacks_object_store_keeps_no_plaintext_on_disk():
    marker, body = marker_object(16_384)
    client, key = s3_client(), f"tests/at-rest/{uuid.uuid4().hex}"
    client.put_object(SETTINGS.buckets.artifacts, key, io.BytesIO(body), len(body))
    try:
        got = client.get_object(SETTINGS.buckets.artifacts, key)
        try:
            assert got.read() == body  # decrypted on the way out
        finally:
            got.close()
            got.release_conn()
        store = SETTINGS.paths.data / "s3" / "data"
        assert any(store.rglob("*.dat")), f"no volume files under {store}"
        assert files_holding(store, marker) == []
    finally:
        client.remove_object(SETTINGS.buckets.artifacts, key)
