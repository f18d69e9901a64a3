"""Fixed-point arithmetic and integer kernels shared by :mod:`vidconv_deploy.quant` and :mod:`vidconv_deploy.reference`.

The layer below both: the quantizer decides positions with these rules and the integer reference
executes with them, so neither imports the other.

- :mod:`~vidconv_deploy.fixpoint.arithmetic`: vai_q_pytorch's rounding, fix-position search, shift
  rules and pooling divisors;
- :mod:`~vidconv_deploy.fixpoint.kernels`: op kernels (shape-only and exact integer) used by the float
  calibration pass and the integer reference;
- :mod:`~vidconv_deploy.fixpoint.qdq_metadata`: the metadata a QDQ model written by the quantizer carries
  for its readers.
"""
