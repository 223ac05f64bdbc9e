"""The server's Prometheus metrics, in a registry of its own (one per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ml_assets_serve_requests",
            "Prediction requests by kind, HTTP status and the model version that answered",
            ["kind", "status", "version"],
            registry=r,
        )
        self.latency = Histogram(
            "ml_assets_serve_request_seconds",
            "Time to answer a prediction request, by kind and model version",
            ["kind", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch = Histogram(
            "ml_assets_serve_batch_images",
            "Images per prediction request",
            ["kind"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.unauthorized = Counter(
            "ml_assets_serve_unauthorized",
            "Requests refused with 401 (no or no valid bearer token), by path",
            ["path"],
            registry=r,
        )
        self.model = Gauge(
            "ml_assets_serve_model_info",
            "1 for the model version each kind serves now",
            ["kind", "version", "export_hash"],
            registry=r,
        )
        self.load_seconds = Gauge(
            "ml_assets_serve_model_load_seconds",
            "Seconds it took to load a served model",
            ["kind", "version"],
            registry=r,
        )
        self.switches = Counter(
            "ml_assets_serve_model_switches",
            "Champion changes picked up without a restart",
            ["kind"],
            registry=r,
        )

    def loaded(self, served, old) -> None:
        """A champion was loaded (``old``: the one it replaced)."""
        if old is not None:
            self.model.remove(old.kind, old.version, old.export_hash)
            self.switches.labels(served.kind).inc()
        self.model.labels(served.kind, served.version, served.export_hash).set(1)
        self.load_seconds.labels(served.kind, served.version).set(served.load_seconds)
