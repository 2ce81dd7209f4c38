"""The job's embedding cache (each distinct text embedded once, least recently used out first) and its client."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from operators.embedding import DIM, CachingEmbedder, EmbedderUnavailable, RemoteEmbedder, VectorCache


class Fake:
    dim = 384

    def __init__(self, fail=False):
        self.calls, self.fail = [], fail

    def embed(self, texts):
        if self.fail:
            raise EmbedderUnavailable("down")
        self.calls.append(list(texts))
        return np.stack([np.full(384, float(len(t)), dtype=np.float32) for t in texts])


def test_each_distinct_text_is_embedded_once_and_rows_keep_their_order():
    inner = Fake()
    emb = CachingEmbedder(inner, VectorCache(10))
    a = emb.embed(["aa", "b", "aa"])
    assert inner.calls == [["aa", "b"]] and a.shape == (3, 384) and list(a[:, 0]) == [2.0, 1.0, 2.0]
    b = emb.embed(["b", "ccc"])
    assert inner.calls == [["aa", "b"], ["ccc"]] and list(b[:, 0]) == [1.0, 3.0]
    assert emb.prefetch(["aa", "b", "dddd"]) == 2 and inner.calls[-1] == ["dddd"]


def test_the_least_recently_used_text_leaves_first():
    inner = Fake()
    emb = CachingEmbedder(inner, VectorCache(2))
    emb.embed(["a", "b"])
    emb.embed(["a"])  # a is now the most recent
    emb.embed(["c"])  # b leaves
    emb.embed(["a", "b"])
    assert inner.calls[-1] == ["b"]


def test_prefetch_swallows_an_outage_and_embed_raises_it_per_text():
    """A cached text is still answered while the service is down; a new one raises for its user to record."""
    inner = Fake()
    emb = CachingEmbedder(inner)
    emb.embed(["known"])
    inner.fail = True
    assert emb.prefetch(["known", "new"]) == 1
    assert emb.embed(["known"]).shape == (1, 384)
    with pytest.raises(EmbedderUnavailable):
        emb.embed(["new"])


# RemoteEmbedder against a loopback HTTP server speaking the embedding service's wire format


class _Wire:
    """A loopback server: vectors whose first component is the text's length; counts connections."""

    def __init__(self, status: int = 200, body: bytes | None = None, close_after_each: bool = False):
        import base64
        import json
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        wire = self
        self.connections = 0
        self.calls = 0

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                return

            def setup(self) -> None:
                super().setup()
                wire.connections += 1

            def do_POST(self) -> None:
                wire.calls += 1
                texts = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["texts"]
                vectors = np.zeros((len(texts), DIM), dtype="<f4")
                vectors[:, 0] = [len(t) for t in texts]
                out = body if body is not None else json.dumps(
                    {"dim": DIM, "n": len(texts), "vectors": base64.b64encode(vectors.tobytes()).decode()}).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(out)))
                if close_after_each:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(out)
                if close_after_each:
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def wire_factory():
    made: list[_Wire] = []

    def make(**kwargs) -> _Wire:
        made.append(_Wire(**kwargs))
        return made[-1]

    yield make
    for w in made:
        w.close()


def test_remote_embedder_reuses_one_connection_per_thread(wire_factory):
    wire = wire_factory()
    client = RemoteEmbedder(url=wire.url, timeout_s=5)
    for texts in (["a", "bbb"], ["cc"], ["dddd", "e", "ff"]):
        out = client.embed(texts)
        assert out.shape == (len(texts), DIM) and out.dtype == np.float32
        assert list(out[:, 0]) == [len(t) for t in texts]
    assert (wire.calls, wire.connections) == (3, 1)

    results: dict[int, list[float]] = {}

    def work(k: int) -> None:
        results[k] = [float(client.embed(["x" * (k + 1)] * 2)[1, 0]) for _ in range(5)][-1:]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {0: [1.0], 1: [2.0], 2: [3.0]}
    assert wire.connections == 4  # the main thread's and one per worker thread


def test_remote_embedder_reopens_a_connection_the_server_closed(wire_factory):
    wire = wire_factory(close_after_each=True)
    client = RemoteEmbedder(url=wire.url, timeout_s=5)
    assert [float(client.embed(["abc"])[0, 0]) for _ in range(3)] == [3.0, 3.0, 3.0]
    assert wire.connections == 3 and client.available()


@pytest.mark.parametrize("status, body", [(503, b'{"error": "model loading"}'), (200, b"not json"),
                                          (200, b'{"dim": 384}')])
def test_remote_embedder_bad_answers_raise_unavailable_and_back_off(wire_factory, status, body):
    wire = wire_factory(status=status, body=body)
    client = RemoteEmbedder(url=wire.url, timeout_s=5, backoff_s=60)
    with pytest.raises(EmbedderUnavailable):
        client.embed(["hello"])
    assert not client.available()
    with pytest.raises(EmbedderUnavailable, match="marked down"):
        client.embed(["hello"])
    assert wire.calls == 1  # backing off: the second call never reached the service


def test_remote_embedder_rejects_a_url_it_cannot_call():
    with pytest.raises(ValueError, match="http"):
        RemoteEmbedder(url="ftp://127.0.0.1:9420")
