"""JWST Stage-3 imaging (calwebb_image3) science functions.

The science lives in small modules that take arrays and WCS objects and
return arrays and tables; only :mod:`calimage3.io` reads or writes files.
"""

__version__ = "0.1.0"
