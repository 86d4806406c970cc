"""Batch motion correction on a Dask cluster (``dask.distributed``).

Install with ``pip install "napari-flowscope[distributed]"``.  Dask itself
is imported only when a run starts.  See ``docs/distributed.md``.
"""

from .correct import correct_distributed, local_cluster

__all__ = ['correct_distributed', 'local_cluster']
