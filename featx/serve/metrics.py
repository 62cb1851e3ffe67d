"""Prometheus metrics of one server (its own registry, so several apps in one process stay apart)."""

from __future__ import annotations

from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_STAGE_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1, 5)
# where an image request's time goes, in order (see featx.serve.requests.features_of and
# featx.serve.answers.predict_answer)
STAGES = ("parse", "decode_hop", "decode", "batch_wait", "forward", "forward_hop", "alone_hop", "classify")


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("featx_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("featx_request_seconds", "request latency by route", ["route"],
                                 buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.batch_images = Histogram("featx_batch_images", "images per forward pass", buckets=_BATCH_BUCKETS,
                                      registry=self.registry)
        self.queue = Gauge("featx_queue_images", "images waiting for a forward pass", registry=self.registry)
        self.stages = Histogram("featx_stage_seconds", "time of an image request in each stage: parse (HTTP body "
                                "and form), decode_hop (to and from the decode pool), decode, batch_wait (until its "
                                "forward pass starts), forward, forward_hop (back to the request), alone_hop (a "
                                "lone request's one trip to and from the forward thread), classify",
                                ["stage"], buckets=_STAGE_BUCKETS, registry=self.registry)
        self.reloads = Counter("featx_reloads", "artifact reloads by outcome", ["outcome"], registry=self.registry)

    def set_queue_source(self, source: Callable[[], int]) -> None:
        self.queue.set_function(source)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stages.labels(stage).observe(seconds)

    def observe_batch(self, images: int) -> None:
        self.batch_images.observe(images)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
