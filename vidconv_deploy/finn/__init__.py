"""FINN dataflow target: a Brevitas-quantized VidConv, the finn-plus flow, estimates and the bundle.

finn-plus is an optional dependency (``scripts/finn-install.sh``); only :mod:`.flow`, :mod:`.chain`
and :mod:`.pipeline` import it, through :mod:`.finn_env`.
"""
