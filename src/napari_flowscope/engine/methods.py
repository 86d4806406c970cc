"""Flow methods: the per-level solver protocol and the method table.

Every method is one coarse-to-fine *level solver* (the shared driver in
:mod:`napari_flowscope.engine.pyramid` walks the levels) and one row of
:data:`METHODS`.  Adding a method is one module with a solver class and
one :func:`register_method` call; ``FlowParams(method=name)`` and
:func:`napari_flowscope.engine.estimate_flow` then accept it.

A solver is built once per reference (``make_solver(params,
reliability)``), prepares each pyramid level of the reference once
(``prepare``), and refines the flow of a level for each moving frame
(``solve``).  States must be safe to share between threads: one
:class:`~napari_flowscope.engine.FlowEstimator` serves several at once.
Shapes are written for 2-D frames; a volume engine uses the same protocol
with ``(Z, Y, X)`` levels and ``(Z, Y, X, 3)`` flow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

__all__ = [
    'INTENSITY_MODES',
    'METHODS',
    'LevelSolver',
    'Method',
    'get_method',
    'register_method',
]

#: How the frames are normalised before they reach a solver (see
#: :class:`Method`).
INTENSITY_MODES = ('local', 'global')


class LevelSolver(Protocol):
    """What a flow method implements: one pyramid level at a time."""

    def prepare(self, reference_level: np.ndarray, *, level: int) -> Any:
        """Precompute everything that depends on the reference only.

        Parameters
        ----------
        reference_level : ndarray, shape (h, w), float32
            The normalised reference at this pyramid level (read-only).
        level : int
            0 for full resolution, ``k`` for ``k`` halvings.

        Returns
        -------
        state
            Anything; passed back to :meth:`solve` for this level.
        """

    def solve(
        self, state: Any, moving_level: np.ndarray, w: np.ndarray
    ) -> np.ndarray:
        """Refine the flow of one level for one moving frame.

        Parameters
        ----------
        state
            What :meth:`prepare` returned for this level.
        moving_level : ndarray, shape (h, w), float32
            The normalised moving frame at this level.
        w : ndarray, shape (h, w, 2), float32
            Current ``[x, y]`` flow in this level's pixels, with
            ``moving(x + w(x)) ~ reference(x)``: the previous level's
            result upsampled (or the warm start).  The solver may modify
            it in place.

        Returns
        -------
        ndarray, shape (h, w, 2), float32
            The refined flow (may be ``w`` itself).
        """


@dataclass(frozen=True)
class Method:
    """One row of the method table.

    Attributes
    ----------
    name : str
        The ``FlowParams.method`` value.
    make_solver : callable
        ``make_solver(params, reliability) -> LevelSolver`` with the
        :class:`~napari_flowscope.engine.FlowParams` and the reference's
        full-resolution reliability map ``(H, W)`` float32 (read-only).
    intensities : {'local', 'global'}
        ``'local'``: both frames are locally normalised (zero mean and
        unit deviation in a window of a few px, see
        :func:`~napari_flowscope.engine._normalize.local_normalize`), so
        gain and offset changes, also uneven ones, cancel.  ``'global'``:
        the reference is mapped to its robust 0-1 range and the moving
        frame to the reference's mean and standard deviation; the solver
        normalises further itself if it wants to.
    description : str
        One line for help texts.
    label : str, optional
        Short name for menus (default ``name``).
    parameters : tuple of str, optional
        The :class:`~napari_flowscope.engine.FlowParams` fields the method
        uses (default all); a GUI disables the others.
    forward_backward : bool
        Whether the confidence also requires forward-backward consistency
        (a second, backward estimate per frame): for methods flexible
        enough to fit an unrelated frame locally.
    """

    name: str
    make_solver: Callable[..., LevelSolver]
    intensities: str
    description: str
    label: str | None = None
    parameters: tuple[str, ...] | None = None
    forward_backward: bool = False

    def __post_init__(self):
        if self.label is None:
            object.__setattr__(self, 'label', self.name)
        if self.intensities not in INTENSITY_MODES:
            raise ValueError(
                f'intensities must be one of {INTENSITY_MODES}; '
                f'got {self.intensities!r}'
            )


#: The method table, by name, in registration order.
METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add a method to :data:`METHODS` (a name may be registered once)."""
    if method.name in METHODS:
        raise ValueError(f'a flow method {method.name!r} is registered')
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method called ``name``.

    Raises
    ------
    ValueError
        Naming the registered methods.
    """
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f'method must be one of {", ".join(map(repr, METHODS))}; '
            f'got {name!r}'
        ) from None


def _register_builtin_methods():
    from .lucas_kanade import LucasKanadeSolver
    from .patch_search import PatchSearchSolver
    from .variational import VariationalSolver

    register_method(
        Method(
            'lucas_kanade',
            LucasKanadeSolver,
            'local',
            'dense pyramidal Lucas-Kanade on locally normalised frames, '
            'noise-adaptive',
            label='Lucas-Kanade (fast)',
            parameters=('sigma', 'reliability_threshold', 'levels', 'warps'),
        )
    )
    register_method(
        Method(
            'variational',
            VariationalSolver,
            'global',
            'robust variational flow (smoothness weight alpha)',
            label='Variational (robust)',
            parameters=(
                'sigma',
                'reliability_threshold',
                'levels',
                'alpha',
                'iterations',
                'warps',
            ),
        )
    )
    register_method(
        Method(
            'patch_search',
            PatchSearchSolver,
            'global',
            'patch inverse search with variational refinement (DIS)',
            label='Patch search (sharp)',
            parameters=(
                'sigma',
                'reliability_threshold',
                'alpha',
                'iterations',
            ),
            # Without it, 46-56 % of a frame of unrelated tissue, or of
            # tissue shifted beyond reach, was trusted (docs/benchmarks.md).
            forward_backward=True,
        )
    )


_register_builtin_methods()
