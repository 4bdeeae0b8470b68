"""The service's Prometheus figures, in a registry of its own (not the process-global one), so two apps
in one process (tests, an embedding application) count apart."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("imgclf_requests_total", "HTTP requests answered, by route and status", ["route", "status"], registry=r)
        self.latency = Histogram(
            "imgclf_request_seconds",
            "Time from a request's arrival to its answer, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch = Histogram("imgclf_batch_images", "Images per forward pass", buckets=BATCH_BUCKETS, registry=r)
        self.images = Counter("imgclf_images_total", "Images classified", registry=r)
        self.queue = Gauge("imgclf_queue_depth", "Requests waiting for the model", registry=r)
        self.rejections = Counter("imgclf_rejections_total", "Requests refused, by reason", ["reason"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
