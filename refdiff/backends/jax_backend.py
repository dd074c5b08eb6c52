"""The JAX backend: draws from ``jax.random`` keys, ``jax.grad``, ``jax.jit``, and waiting for
JAX's asynchronous dispatch.

JAX's random numbers are functional: a key gives the same draws every time it is used. The
loop in :func:`refdiff.sample` draws once per step from one generator, so the backend wraps a
key in a small mutable :class:`KeyStream` that splits its key on each draw (as a
``torch.Generator`` or ``numpy.random.Generator`` advances). A caller passes ``None``, an int
seed, a JAX key, or a :class:`KeyStream` (to continue one stream across calls).

float64 needs JAX's 64-bit mode, which is off by default: enable it at program start with
``jax.config.update("jax_enable_x64", True)`` (or the environment variable
``JAX_ENABLE_X64=1``). Without it a float64 draw is refused (JAX would silently return
float32).
"""

from __future__ import annotations

import secrets
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from refdiff.backends import Backend, _describe, get_backend

__all__ = ["JaxBackend", "KeyStream"]

_MASK32 = 0xFFFFFFFF
_X64_HINT = ('enable JAX\'s 64-bit mode at program start: jax.config.update('
             '"jax_enable_x64", True) or the environment variable JAX_ENABLE_X64=1')


def x64_enabled() -> bool:
    """True when JAX makes float64 arrays (``jax_enable_x64``, including the context manager
    ``jax.enable_x64``)."""
    return jax.dtypes.canonicalize_dtype(jnp.float64) == np.dtype(np.float64)


def _is_key(a: Any) -> bool:
    """True for a typed JAX key array (``jax.random.key``)."""
    return isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)


def _is_raw_key(a: Any) -> bool:
    """True for a raw threefry key (``jax.random.PRNGKey``): a uint32 array of shape (2,)."""
    return (isinstance(a, jax.Array) and not _is_key(a) and a.dtype == jnp.uint32
            and tuple(a.shape) == (2,))


def key_from_seed(seed: int) -> Any:
    """The threefry key of a seed in [0, 2**64 − 1]: key data (seed >> 32, seed & (2**32 − 1)).

    This equals ``jax.random.key(seed)`` where JAX takes the seed whole (seed < 2**63 with
    64-bit mode on; seed < 2**32 with it off) and, unlike it, never truncates: with 64-bit
    mode off ``jax.random.key(2**32)`` is ``jax.random.key(0)``, here the two differ.
    """
    data = np.array([seed >> 32, seed & _MASK32], dtype=np.uint32)
    return jax.random.wrap_key_data(data, impl="threefry2x32")


class KeyStream:
    """A mutable stream of JAX keys: each draw splits the held key (the generator object of
    the JAX backend, as ``torch.Generator`` is torch's).

    Draw n (n = 0, 1, ...) of a stream started from key k₀ uses the subkey s_n of
    ``k_{n+1}, s_n = jax.random.split(k_n)``; so one stream gives different draws on each call,
    and two streams started from the same key give the same sequence.

    Parameters
    ----------
    key : JAX key
        A typed key array of shape () (``jax.random.key(seed)``) or a raw uint32 key of
        shape (2,) (``jax.random.PRNGKey(seed)``, JAX's default implementation).

    Raises
    ------
    TypeError
        If ``key`` is anything else (an int: use ``JaxBackend.generator(seed)`` or
        ``KeyStream(jax.random.key(seed))``; a float array; a batch of keys).

    Notes
    -----
    The stream is Python state: inside ``jax.jit`` draw from a key passed into the traced
    function (the backend wraps it in a stream local to the trace), never from a stream
    created outside it (its held key would become a leaked tracer).

    Examples
    --------
    >>> import jax
    >>> from refdiff.backends import get_backend
    >>> jb = get_backend("jax")
    >>> stream = KeyStream(jax.random.key(0))
    >>> a = jb.normal((2,), generator=stream)
    >>> b = jb.normal((2,), generator=stream)  # continues the stream: differs from a
    >>> bool((a != b).all())
    True
    """

    def __init__(self, key: Any) -> None:
        if _is_raw_key(key):
            key = jax.random.wrap_key_data(key)
        elif not (_is_key(key) and key.shape == ()):
            raise TypeError("key must be one JAX PRNG key (jax.random.key(seed) or "
                            f"jax.random.PRNGKey(seed)), got {_describe(key)}")
        self._key = key

    @property
    def key(self) -> Any:
        """The key the next draw will split (a typed key array of shape ())."""
        return self._key

    def next_key(self) -> Any:
        """A fresh subkey for one draw; the stream advances."""
        self._key, sub = jax.random.split(self._key)
        return sub

    def __repr__(self) -> str:
        if isinstance(self._key, jax.core.Tracer):
            return "KeyStream(<traced key>)"
        return f"KeyStream(key data {np.asarray(jax.random.key_data(self._key)).tolist()})"


class JaxBackend(Backend):
    """JAX arrays (``jax.Array``, and JAX tracers under ``jax.jit``/``jax.grad``/``jax.vmap``)
    on any JAX device.

    Generators: ``None`` (a fresh random seed), an int seed in [0, 2**64 − 1] (its key is
    :func:`key_from_seed`), a JAX key (typed or raw; every call that takes the same key gives
    the same draws, JAX's own rule), or a :class:`KeyStream` (returned as is: successive draws
    continue its stream). Devices: ``None`` (JAX's default device), a ``jax.Device``, or a
    platform string ``"cpu"``, ``"gpu"`` (``"cuda"`` is a synonym), ``"tpu"``, optionally
    with an index (``"gpu:1"``, the index among that platform's devices).

    The default dtype is float32, JAX's own default. float64 needs 64-bit mode (module
    docstring); float16 and bfloat16 normals are the float32 normals of the same key, rounded.
    """

    name = "jax"
    generator_types = (KeyStream, jax.Array)
    generator_doc = ("a JAX key (jax.random.key(seed) or jax.random.PRNGKey(seed)) or a "
                     "refdiff.backends.jax_backend.KeyStream")
    max_seed = 2**64 - 1
    default_dtype = jnp.float32

    @property
    def xp(self) -> Any:
        return jnp  # JAX's own namespace is array-API compliant (array-api-compat returns it)

    def owns(self, a: Any) -> bool:
        """True for a ``jax.Array`` (typed key arrays included) or a JAX tracer."""
        return isinstance(a, (jax.Array, jax.core.Tracer))

    # ----- draws ---------------------------------------------------------------------------
    def _new_generator(self, seed: Any, device: Any) -> KeyStream:
        if seed is None:
            seed = secrets.randbits(64)
        return KeyStream(key_from_seed(seed))

    def _adopt(self, generator: Any, device: Any) -> KeyStream:
        if isinstance(generator, KeyStream):
            return generator
        if (_is_key(generator) and generator.shape == ()) or _is_raw_key(generator):
            return KeyStream(generator)
        raise TypeError(f"generator must be None, a non-negative int seed or {self.generator_doc}"
                        f", got a JAX array that is not one key: {_describe(generator)}")

    def _device(self, device: Any) -> Any:
        if device is None or isinstance(device, jax.Device):
            return device
        if isinstance(device, str):
            platform, _, index = device.partition(":")
            platform = "gpu" if platform == "cuda" else platform
            if platform in ("cpu", "gpu", "tpu") and (index == "" or index.isdigit()):
                try:
                    found = jax.devices(platform)
                except RuntimeError:
                    found = []
                i = int(index or 0)
                if i < len(found):
                    return found[i]
                present = ", ".join(str(d) for d in jax.devices())
                raise ValueError(f"device {device!r}: JAX has no such device; present: "
                                 f"{present}")
        raise ValueError("device must be None, a jax.Device or a platform string ('cpu', "
                         f"'gpu', 'tpu', optionally ':index'), got {_describe(device)}")

    def _dtype(self, dtype: Any) -> Any:
        try:
            dt = jnp.dtype(dtype)
        except (TypeError, ValueError):
            dt = None
        if dt is None or not jnp.issubdtype(dt, jnp.floating):
            raise TypeError(f"dtype must be a real floating JAX dtype (e.g. jax.numpy.float32), "
                            f"got {_describe(dtype)}")
        if dt == np.float64 and not x64_enabled():
            raise TypeError(f"dtype float64 needs JAX's 64-bit mode, which is off (JAX would "
                            f"return float32): {_X64_HINT} (float32 needs no switch)")
        return dt

    def _normal(self, shape: Any, dtype: Any, device: Any, generator: Any) -> Any:
        draw = jnp.float64 if dtype == np.float64 else jnp.float32
        z = jax.random.normal(generator.next_key(), shape, dtype=draw).astype(dtype)
        return self._place(z, device)

    def _uniform(self, shape: Any, dtype: Any, device: Any, generator: Any) -> Any:
        # drawn in the dtype itself: rounding a float32 draw to float16 could give 1.0
        return self._place(jax.random.uniform(generator.next_key(), shape, dtype=dtype), device)

    @staticmethod
    def _place(a: Any, device: Any) -> Any:
        return a if device is None else jax.device_put(a, device)

    # ----- the rest ------------------------------------------------------------------------
    def grad(self, fn: Callable[[Any], Any], x: Any) -> Any:
        """∇ₓ fn(x) by ``jax.grad``.

        Parameters
        ----------
        fn : callable
            ``fn(x) -> scalar`` (shape ()), written with JAX operations.
        x : jax.Array, real floating
            The point.

        Returns
        -------
        jax.Array
            Of the shape and dtype of ``x``.

        Raises
        ------
        TypeError
            If ``x`` is not a real floating JAX array.
        ValueError
            If ``fn`` returns an array that is not a scalar.
        """
        if not self.owns(x) or _is_key(x) or not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"x must be a real floating JAX array, got {_describe(x)}")

        def scalar(z: Any) -> Any:
            out = fn(z)
            if jnp.ndim(out) != 0:
                raise ValueError(f"fn must return a scalar, got shape {tuple(jnp.shape(out))}")
            return out

        return jax.grad(scalar)(x)

    def to_numpy(self, a: Any) -> Any:
        """A host NumPy copy of ``a`` (bfloat16 as float32: NumPy has no bfloat16).

        Raises
        ------
        TypeError
            If ``a`` is a JAX tracer (its values exist only when the traced function runs).
        """
        if isinstance(a, jax.core.Tracer):
            raise TypeError("a is a traced JAX array (inside jax.jit, jax.grad or jax.vmap): "
                            "its values can be read only outside the traced function")
        out = np.asarray(a)
        return out.astype(np.float32) if a.dtype == jnp.bfloat16 else out

    def synchronize(self, device: Any = None, *, wait_for: Any = None) -> None:
        """Block until JAX's asynchronously dispatched work has finished.

        JAX returns from each operation before the device has computed it; only an array (its
        ``block_until_ready``) can be waited for. JAX has no device-wide barrier, so:

        - ``wait_for`` given (an array or any pytree of arrays, e.g. the outputs of the code
          being timed): ``jax.block_until_ready(wait_for)``, which waits for exactly the work
          those arrays depend on. This is the way to time JAX code.
        - otherwise: ``jax.effects_barrier()`` (JAX's ordered side effects, e.g. callbacks)
          and then one tiny computation on ``device``, waited for. XLA's CPU and GPU clients
          run the computations of one device in dispatch order on one stream, so in practice
          this waits for earlier work there, but JAX does not promise that.

        Parameters
        ----------
        device : None, jax.Device or str, optional
            As for the draws (``None``: JAX's default device).
        wait_for : array or pytree of arrays, optional
            What to wait for.

        Raises
        ------
        ValueError
            For a device :meth:`generator` refuses.
        """
        if wait_for is not None:
            jax.block_until_ready(wait_for)
            return
        jax.effects_barrier()
        self._place(jnp.zeros(()), self._device(device)).block_until_ready()

    def ddim_loop(self, loop: Any, model: Any, x_T: Any, guidance: Any, run: Any,
                  generator: Any) -> Any:
        """The JAX part of :meth:`refdiff.compiled.DDIMLoop.sample`: the whole loop as one
        ``jax.jit`` of a ``jax.lax.scan`` (the model must be traceable)."""
        return _sample_jax(loop, model, x_T, guidance, run, generator)

    def compile(self, fn: Callable[..., Any], **jit_options: Any) -> Callable[..., Any]:
        """``jax.jit(fn, **jit_options)``.

        Every positional argument is traced unless named static in ``jit_options``
        (``static_argnums``/``static_argnames``): refdiff's range checks on Python numbers
        (``eta``, ``scale``) need those static or bound with ``functools.partial``.
        """
        return jax.jit(fn, **jit_options)


# ----- the compiled DDIM loop of refdiff.compiled.DDIMLoop: its JAX part ------------------
# (one jax.jit of a lax.scan over the steps, the noise drawn inside from the run's key)

def _jax_loop(loop: Any, model: Any, eta: float, branches: str) -> Callable[..., Any]:
    from refdiff.fused import guided_ddim_step as step
    from refdiff._loop import _model_output

    key: Any = (model, eta, branches)
    try:
        cached = loop._jax_loops.get(key)
    except TypeError:                      # an unhashable model: no cache
        key, cached = None, None
    if cached is not None:
        return cached
    xp = get_backend("jax").xp

    def run_all(x_T: Any, cond: Any, uncond: Any, scale: Any, ts: Any, ab_t: Any,
                ab_prev: Any, keep: Any, rng: Any) -> Any:
        loop.compilations += 1             # runs once per trace, i.e. per compilation

        def body(carry: Any, level: Any) -> Any:
            x, k = carry
            t, a, a_prev, m = level
            if branches == "both":         # CFG Algorithm 2, line 5
                eps_c = _model_output(xp, False, model, x, t, cond)[0]
                eps_u = _model_output(xp, False, model, x, t, uncond)[0]
            else:
                eps_u = eps_c = _model_output(xp, False, model, x, t,
                                              cond if branches == "cond" else uncond)[0]
            noise = None
            if eta > 0:                    # the JAX backend's KeyStream: split, draw
                k, sub = jax.random.split(k)
                noise = jax.random.normal(sub, x.shape, x.dtype) * m.astype(x.dtype)
            return (step(x, eps_u, eps_c, scale, a, a_prev, eta=eta, noise=noise), k), None

        (x, _), _ = jax.lax.scan(body, (x_T, rng), (ts, ab_t, ab_prev, keep))
        return x

    jitted = jax.jit(run_all)
    if key is not None:
        loop._jax_loops[key] = jitted
    return jitted

def _sample_jax(loop: Any, model: Any, x_T: Any, g: Any, run: Any, generator: Any) -> Any:
    from refdiff.compiled import RunInfo

    noisy = run.eta > 0
    rng = get_backend("jax").generator(generator).key if noisy else None
    s = float(run.scale)
    branches = "cond" if s == 1 else "uncond" if s == 0 else "both"
    fn = _jax_loop(loop, model, run.eta, branches)
    n = len(run.levels)
    # JAX's default float (float32 unless jax_enable_x64) for the levels: see sample_ddim
    ts = jnp.asarray([t for t, _, _ in run.levels], dtype=jnp.int32)
    ab_t = jnp.asarray([a for _, a, _ in run.levels])
    ab_prev = jnp.asarray([p for _, _, p in run.levels])
    keep = jnp.asarray([1.0] * (n - 1) + [0.0])  # no noise after the last step
    before = loop.compilations
    x = fn(x_T, g.cond, g.uncond, jnp.asarray(s, dtype=x_T.dtype), ts, ab_t, ab_prev,
           keep, rng)
    new = loop.compilations - before
    loop.last_run = RunInfo(n, new, 0, False)  # one program: nothing after step 1
    return x
