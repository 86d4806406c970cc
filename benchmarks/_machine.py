"""The one-line machine description that heads a benchmark's section."""

import os
import platform

import cv2
import numpy as np
import skimage


def machine(*, opencv_threads=False):
    """Cores, CPU model and the versions the numbers depend on.

    ``opencv_threads`` adds OpenCV's thread count (for benchmarks that time
    OpenCV-backed estimators).
    """
    try:
        with open('/proc/cpuinfo') as cpuinfo:
            model = next(
                line.split(':', 1)[1].strip()
                for line in cpuinfo
                if line.startswith('model name')
            )
    except (OSError, StopIteration):
        model = platform.processor() or 'unknown CPU'
    opencv = f'OpenCV {cv2.__version__}'
    if opencv_threads:
        opencv += f' ({cv2.getNumThreads()} threads)'
    return (
        f'{os.cpu_count()}-core VM ({model}), Python '
        f'{platform.python_version()}, {opencv}, NumPy {np.__version__}, '
        f'scikit-image {skimage.__version__}'
    )
