"""Type aliases of the public API.

Arrays come from any namespace that follows the Python array API standard (NumPy, CuPy, torch,
JAX, Dask, array-api-strict); they share no nominal base class, so ``Array`` is ``Any`` to the
type checker and a promise of the standard's interface to the reader.
"""

from __future__ import annotations

from typing import Any, TypeAlias
from collections.abc import Callable

__all__ = ["Array", "Namespace", "Device", "DType", "Model", "Noise"]

#: An array of any array-API namespace.
Array: TypeAlias = Any
#: An array-API namespace (the module ``array_namespace(x)`` returns).
Namespace: TypeAlias = Any
#: A device object of a namespace (``x.device``).
Device: TypeAlias = Any
#: A dtype object of a namespace.
DType: TypeAlias = Any
#: A network: ``model(x, t) -> output`` (a denoiser ``D(x, sigma)`` or score ``s(x, t)`` alike).
Model: TypeAlias = Callable[[Any, Any], Any]
#: Explicit noise: an array of draws (draw index first) or a callable ``noise(i) -> array``.
Noise: TypeAlias = Any
