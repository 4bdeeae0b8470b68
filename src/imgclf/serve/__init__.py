"""`imgclf serve`: a trained bundle behind HTTP, for applications, inference-protocol clients and people.

settings.py holds the limits, model.py the loaded bundle, batcher.py the micro-batching inference
thread, v2.py the KServe/Triton open inference protocol, metrics.py the Prometheus figures, app.py the
routes, server.py uvicorn with a graceful drain, page.html the web page.
"""

from imgclf.serve.settings import ServeSettings

__all__ = ["ServeSettings"]
