"""`imgclf serve`: a trained bundle behind HTTP, for applications, inference-protocol clients and people.

settings.py holds the limits, model.py the loaded bundle, batcher.py the micro-batching inference
thread, dataplane.py the model, batcher, limits and state behind calls that know nothing of HTTP,
routes.py imgclf's own routes and v2_routes.py the KServe/Triton open inference protocol's (v2.py its
tensors) as thin routers over it, guard.py the ASGI guard (token, body bound, admission, metrics),
metrics.py the Prometheus figures, app.py the app that puts them together, server.py uvicorn with a
graceful drain, page.html the web page.
"""

from imgclf.serve.settings import ServeSettings

__all__ = ["ServeSettings"]
