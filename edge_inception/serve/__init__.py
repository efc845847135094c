"""Serving beyond one device: Triton Inference Server model repositories (``serve export``), the server (``serve run``),
a gRPC client (``predict grpc://...``) and MLPerf LoadGen scenarios (``bench --scenario``).

Imports ``engines`` and ``data``, never ``convert``; tritonclient and mlperf_loadgen are imported where used.
"""
