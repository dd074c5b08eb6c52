"""The torch backend (CPU and CUDA, one code path): seeded normals, autograd, synchronize,
and ``torch.compile`` for :mod:`refdiff.compiled`."""

from __future__ import annotations

from typing import Any, Callable

import array_api_compat.torch as torch_xp
import torch

from refdiff.backends import Backend, _describe, get_backend


class TorchBackend(Backend):
    """torch tensors on any device. Normals are drawn in float64 (float64 requests) or
    float32 (every other dtype) on the target device and cast, so float16/bfloat16 draws
    are the rounded float32 draws of the same seed."""

    name = "torch"
    generator_types = (torch.Generator,)
    generator_doc = "a torch.Generator (on the device of the draws)"
    max_seed = 2**64 - 1  # torch.Generator.manual_seed takes seeds in [0, 2**64 - 1]
    default_dtype = torch.float32

    @property
    def xp(self) -> Any:
        return torch_xp

    def owns(self, a: Any) -> bool:
        return isinstance(a, torch.Tensor)

    def _new_generator(self, seed: Any, device: Any) -> Any:
        gen = torch.Generator(device=device)
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(seed)
        return gen

    def _adopt(self, generator: Any, device: Any) -> Any:
        if generator.device.type != device.type:
            raise ValueError(f"generator is a torch.Generator on {generator.device} but the "
                             f"draws are on {device}; pass a generator of that device or an "
                             "int seed")
        return generator

    def _device(self, device: Any) -> Any:
        if device is None:
            return torch.device("cpu")
        try:
            return torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise ValueError(f"device must be None or a torch device (e.g. 'cpu', 'cuda'), "
                             f"got {_describe(device)}") from None

    def _dtype(self, dtype: Any) -> Any:
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a real floating torch dtype (e.g. torch.float32), "
                            f"got {_describe(dtype)}")
        return dtype

    def _normal(self, shape: Any, dtype: Any, device: Any, generator: Any) -> Any:
        draw = torch.float64 if dtype == torch.float64 else torch.float32
        z = torch.randn(shape, generator=generator, dtype=draw, device=device)
        return z.to(dtype)

    def _uniform(self, shape: Any, dtype: Any, device: Any, generator: Any) -> Any:
        return torch.rand(shape, generator=generator, dtype=dtype, device=device)

    def grad(self, fn: Callable[[Any], Any], x: Any) -> Any:
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            out = fn(x_in)
            if out.ndim != 0:
                raise ValueError(f"fn must return a scalar, got shape {tuple(out.shape)}")
            (g,) = torch.autograd.grad(out, x_in)
        return g

    def to_numpy(self, a: Any) -> Any:
        return a.detach().to("cpu").numpy() if a.dtype != torch.bfloat16 else \
            a.detach().to("cpu", torch.float32).numpy()

    def synchronize(self, device: Any = None) -> None:
        device = torch.device(device or "cpu")
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def ddim_loop(self, loop: Any, model: Any, x_T: Any, guidance: Any, run: Any,
                  generator: Any) -> Any:
        """The torch part of :meth:`refdiff.compiled.DDIMLoop.sample`: the fused guided step
        compiled once (ᾱ and s as 0-d float64 tensors), the model eager, under no-grad."""
        return _sample_torch(loop, model, x_T, guidance, run, generator)

    def compile(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        if not hasattr(torch, "compile"):
            raise TypeError(f"torch {torch.__version__} has no torch.compile; refdiff.compiled "
                            "needs torch >= 2.0")
        return torch.compile(fn)


# ----- the compiled DDIM loop of refdiff.compiled.DDIMLoop: its torch part ----------------
# (compilation with a counting TorchDynamo backend, no-grad, CUDA graphs; the loop object
# holds the options, the compiled steps and the counts)

def _counting_backend(loop: Any, cudagraphs: bool) -> Callable[..., Any]:
    """The TorchDynamo backend, wrapped to count the graphs it compiles."""

    def compile_graph(gm: Any, example_inputs: Any) -> Any:
        if loop.backend != "inductor":
            inner = loop.backend if callable(loop.backend) else \
                torch._dynamo.lookup_backend(loop.backend)
            return inner(gm, example_inputs)
        from torch._inductor import list_mode_options
        from torch._inductor.compile_fx import compile_fx

        patches = dict(list_mode_options(loop.mode or "default"))
        patches["triton.cudagraphs"] = cudagraphs   # as mode="reduce-overhead" sets it
        return compile_fx(gm, example_inputs, config_patches=patches)

    def backend(gm: Any, example_inputs: Any) -> Any:
        compiled = compile_graph(gm, example_inputs)
        # counted once it succeeded: AOTAutograd may fail a first attempt and retry
        loop.compilations += 1
        return compiled
    return backend

def _use_cuda_graphs(loop: Any, x: Any) -> bool:
    on_cuda = x.device.type == "cuda"
    if loop.cuda_graphs is True and not on_cuda:
        raise ValueError(f"cuda_graphs=True needs x_T on a CUDA device, got device "
                         f"{x.device}; use cuda_graphs='auto' (skips them on a CPU)")
    if loop.cuda_graphs is True and loop.backend != "inductor":
        raise ValueError(f"cuda_graphs=True needs backend='inductor', got {loop.backend!r}")
    return bool(loop.cuda_graphs) and on_cuda and loop.backend == "inductor"

def _torch_step(loop: Any, eta: float, cudagraphs: bool) -> Callable[..., Any]:

    key = (eta, cudagraphs)
    if key not in loop._torch_steps:
        from refdiff.compiled import _Step
        from refdiff.fused import guided_ddim_step

        eager = _Step(guided_ddim_step, eta)
        # dynamic=False: shapes and η stay static (a changed Python float would otherwise
        # turn symbolic on the next compilation, and η is checked on the host)
        loop._torch_steps[key] = torch.compile(
            eager, backend=_counting_backend(loop, cudagraphs), fullgraph=True,
            dynamic=False)
    return loop._torch_steps[key]

def _sample_torch(loop: Any, model: Any, x_T: Any, g: Any, run: Any, generator: Any) -> Any:
    from refdiff.compiled import RunInfo, _quiet_dynamo
    from refdiff._loop import _model_output

    backend, dev = get_backend("torch"), x_T.device
    noisy = run.eta > 0
    gen = backend.generator(generator, dev)  # checked even when no step draws (η = 0)
    cudagraphs = _use_cuda_graphs(loop, x_T)
    step = _torch_step(loop, run.eta, cudagraphs)
    s = float(run.scale)
    # the per-step scalars in float64 on x's device: one transfer per run, then one 0-d
    # tensor each (separate storages, so TorchDynamo sees no aliasing between inputs)
    host = [s] + [v for _, ab_t, ab_prev in run.levels for v in (ab_t, ab_prev)]
    scalars = [v.clone() for v in torch.tensor(host, dtype=torch.float64,
                                               device=dev).unbind()]
    s_t, levels = scalars[0], scalars[1:]
    before, after_first = loop.compilations, loop.compilations
    x = x_T
    n = len(run.levels)
    with torch.no_grad(), _quiet_dynamo():
        for i, (t, _, _) in enumerate(run.levels):
            if s == 1 or s == 0:           # one branch, as refdiff.sample: ε_u = ε_c
                # (the same tensor twice: TorchDynamo compiles this aliasing once, apart)
                eps_u = eps_c = _model_output(run.xp, False, model, x, t,
                                              g.cond if s == 1 else g.uncond)[0]
            else:                          # CFG Algorithm 2, line 5 (conditional first)
                eps_c = _model_output(run.xp, False, model, x, t, g.cond)[0]
                eps_u = _model_output(run.xp, False, model, x, t, g.uncond)[0]
            noise = None
            if noisy:                      # no noise after the last step
                noise = (torch.zeros_like(x) if i == n - 1 else
                         backend.normal(tuple(x.shape), dtype=x.dtype, device=dev,
                                        generator=gen))
            args = (x, eps_u, eps_c, s_t, levels[2 * i], levels[2 * i + 1], noise)
            if cudagraphs:                 # x (this step's input) is last step's output
                torch.compiler.cudagraph_mark_step_begin()
            x = step(*args)
            if i == 0:
                after_first = loop.compilations
    if cudagraphs:                         # the graph's output buffer is reused next run
        x = x.clone()
    loop.last_run = RunInfo(n, loop.compilations - before, loop.compilations - after_first,
                            cudagraphs)
    return x
