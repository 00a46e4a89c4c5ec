"""microbench: CUDA-graph micro-benchmarks for LLM decoding, from first principles."""
__version__ = "0.1.0"
