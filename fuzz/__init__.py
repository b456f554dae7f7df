"""
Coverage-guided fuzz targets for txgearmand (see C{fuzz/README.rst}).
"""
