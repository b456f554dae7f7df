"""
Benchmarks of txgearmand against its peers.  See README.rst.
"""
