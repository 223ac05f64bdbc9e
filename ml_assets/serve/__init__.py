"""Serving the champions: ``ml-assets serve`` runs a FastAPI app (``app``) on uvicorn that answers
with each kind's promoted ONNX export in onnxruntime (``models``), never PyTorch, follows
promotion without a restart, and reports Prometheus metrics (``metrics``)."""

# The settings' environment variables (the Helm values and the compose file name them too).
TOKENS_ENV = "ML_ASSETS_SERVE_TOKENS"  # a file of SHA-256 hex digests of bearer tokens
OPEN_PATHS_ENV = "ML_ASSETS_SERVE_OPEN_PATHS"  # comma list of paths open without a token
CORS_ENV = "ML_ASSETS_SERVE_CORS_ORIGINS"  # comma list of origins; unset: CORS off
OPEN_PATHS = ("/health", "/ready", "/metrics")
