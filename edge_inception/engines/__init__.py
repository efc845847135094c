"""Backends behind one interface: build an artifact from ONNX for a target, open it as a runner.

Each backend lives in its own module and imports its runtime lazily.
"""
