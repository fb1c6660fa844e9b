"""Cut points of any model torch.fx can trace, found in its graph: no declaration needed.

A cut point is a node through which all information flows: once it is computed, every later
node depends on the input only through it. After the stem, between residual blocks and after
pooling there is such a node; inside a residual block there is none, since the skip connection
carries the block's input past every node of the block. The graph's nodes are named as
``torchvision.models.feature_extraction.get_graph_node_names`` names them ("layer1.0.relu_1",
"avgpool", "flatten"), so a researcher who knows those names knows these.

The model is cut into stages, one ``torch.fx.GraphModule`` per run of nodes between two cut
points. Each stage runs exactly the nodes the model's forward pass runs, in the same order,
on the same (shared, not copied) submodules, so ``top(bottom(x))`` is ``model(x)`` bit for bit.
"""

from __future__ import annotations

import inspect
import math
import os
import traceback
import warnings

import torch
from torch import fx, nn

from .models import Spine, _measure_cuts

__all__ = ["traced_spine", "UntraceableModelError"]


class UntraceableModelError(TypeError):
    """torch.fx could not trace the model; the message names the operation and the way out."""


def _tracer():
    # torchvision's tracer, for its node names; its ops (and timm's registered no-trace modules
    # and functions, when timm is imported) stay single nodes, as in their own feature extractors.
    import torchvision
    from torchvision.models import feature_extraction as fe

    leaf_modules, autowrap_functions = list(fe._get_leaf_modules_for_ops()), []
    try:
        from timm.layers import _fx as timm_fx
    except ImportError:
        pass
    else:
        leaf_modules += timm_fx.get_notrace_modules()
        autowrap_functions += [f for f in timm_fx.get_notrace_functions() if callable(f)]
    return fe.NodePathTracer(autowrap_modules=(math, torchvision.ops), leaf_modules=leaf_modules,
                             autowrap_functions=tuple(autowrap_functions))


def _user_frame(exc: BaseException) -> str:
    """Where in the model's own code tracing failed: the innermost frame outside torch."""
    torch_dir = os.path.dirname(torch.__file__)
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(torch_dir)]
    frames = [f for f in frames if not f.filename.endswith(("/tracing.py", "feature_extraction.py"))]
    if not frames:
        return ""
    f = frames[-1]
    return f" at {os.path.basename(f.filename)}:{f.lineno} `{(f.line or '').strip()}`"


def _concrete_args(model: nn.Module) -> dict | None:
    """forward()'s arguments after the input, fixed at their defaults (masks, flags): one input."""
    params = list(inspect.signature(model.forward).parameters.values())
    required = [p.name for p in params[1:] if p.default is inspect.Parameter.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if not params or required:
        raise UntraceableModelError(
            f"{type(model).__name__}.forward takes {[p.name for p in params]}: cut points need a model of one "
            "input; declare its spine with stitchlib.define_spine(model, names, example)")
    return {p.name: p.default for p in params[1:] if p.default is not inspect.Parameter.empty} or None


def _trace(model: nn.Module) -> tuple[fx.GraphModule, dict]:
    """The model's graph (traced in eval mode: frozen networks are stitched in eval mode) and
    each node's torchvision-style name."""
    concrete = _concrete_args(model)
    was_training = model.training
    tracer = _tracer()
    try:
        graph = tracer.trace(model.eval(), concrete_args=concrete)
    except Exception as exc:  # fx raises TraceError, TypeError, RuntimeError, ... from user code
        raise UntraceableModelError(
            f"torch.fx cannot trace {type(model).__name__}{_user_frame(exc)}: {type(exc).__name__}: {exc}. "
            "Its cut points cannot be found automatically; declare its spine with "
            "stitchlib.define_spine(model, names, example), naming the submodules whose composition is "
            "forward()") from exc
    finally:
        model.train(was_training)
    names = {node: tracer.node_to_qualname[node] for node in graph.nodes if node in tracer.node_to_qualname}
    return fx.GraphModule(tracer.root, graph, class_name=f"{type(model).__name__}Graph"), names


def _cut_nodes(graph: fx.Graph) -> tuple[list[fx.Node], list[fx.Node], fx.Node]:
    """(nodes that depend on the input in graph order, the cut points among them, the output).

    Nodes that do not depend on the input (parameters, constants) are free: each stage that
    uses one recomputes it. A node is a cut point when no earlier input-dependent node is used
    after it, except through it.
    """
    nodes = list(graph.nodes)
    # The first placeholder is the input; the others are arguments fixed at their defaults
    # (concrete_args), used only by fx's checks that they are: free, like constants.
    inputs = [n for n in nodes if n.op == "placeholder"][:1]
    output = next(n for n in nodes if n.op == "output")
    result = output.args[0]
    if not inputs or not isinstance(result, fx.Node):
        raise UntraceableModelError(
            "cut points need a forward() of one tensor input returning one tensor (this one returns "
            f"{type(result).__name__}); declare its spine with "
            "stitchlib.define_spine(model, names, example)")
    dependent = {inputs[0]}
    order = [inputs[0]]
    for n in nodes:
        if n.op not in ("placeholder", "output") and any(a in dependent for a in n.all_input_nodes):
            dependent.add(n)
            order.append(n)
    position = {n: i for i, n in enumerate(order)}
    last_use = [max([position.get(u, len(order)) for u in n.users] or [i]) for i, n in enumerate(order)]
    cuts, reach = [], 0
    for i, n in enumerate(order):
        if 0 < i and reach <= i and n is not result and n.users:
            cuts.append(n)
        reach = max(reach, last_use[i])
    return order, cuts, output


def _stage(root: fx.GraphModule, nodes: list[fx.Node], start: fx.Node, end, name: str) -> fx.GraphModule:
    """A GraphModule running `nodes` (in order) on the value of `start`, returning `end`
    (a node, or the output node's argument for the head)."""
    graph, env = fx.Graph(), {}
    env[start] = graph.placeholder("x")

    def value(n: fx.Node):
        if n not in env:  # a free node (parameter, constant): recomputed here, with its own inputs
            for arg in n.all_input_nodes:
                value(arg)
            env[n] = graph.node_copy(n, lambda a: env[a])
        return env[n]

    for n in nodes:
        for arg in n.all_input_nodes:
            value(arg)
        env[n] = graph.node_copy(n, lambda a: env[a])
    graph.output(fx.graph.map_arg(end, value))
    graph.lint()
    return fx.GraphModule(root, graph, class_name=name)


def _example_inputs(model: nn.Module, graph: fx.Graph):
    """Inputs to measure the cuts on when none is given: the channels of the first layer the graph
    calls; the model's own input size (timm's pretrained_cfg) if it states one, else 32, 64 and 224
    pixels in turn (smallest first: one forward pass at 32 pixels is cheap; a network whose fixed
    pooling needs more gets the next). One image: only shapes are read."""
    modules = dict(model.named_modules())
    # A leaf module (torchvision's Conv2dNormActivation) may hold the first layer inside it.
    called = [modules[n.target] for n in graph.nodes if n.op == "call_module"]
    first = next((m for c in called for m in c.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    if isinstance(first, nn.Linear):
        return [torch.zeros(1, first.in_features)]
    channels = first.in_channels if first is not None else 3
    stated = getattr(model, "pretrained_cfg", None) or {}
    sizes = [tuple(stated["input_size"][-2:])] if len(stated.get("input_size", ())) == 3 else []
    sizes += [(s, s) for s in (32, 64, 224) if (s, s) not in sizes]
    return [torch.zeros(1, channels, *size) for size in sizes]


def traced_spine(model: nn.Module, example: torch.Tensor | None = None) -> Spine:
    """The model cut at every cut point of its traced graph (see the module's docstring)."""
    gm, names = _trace(model)
    if _train_graph_differs(model, names):
        # The stages follow the eval-mode graph: stitching runs its frozen networks in eval mode.
        warnings.warn(f"{type(model).__name__}.forward takes another path in train mode; its traced stages "
                      "follow the eval-mode graph", RuntimeWarning, stacklevel=3)
    order, cuts, output = _cut_nodes(gm.graph)
    if not cuts:
        raise UntraceableModelError(
            f"{type(model).__name__}'s graph has no point through which all information flows (every node "
            "before the output is bypassed by a later use of an earlier one); declare its spine with "
            "stitchlib.define_spine(model, names, example)")
    bounds = [order[0], *cuts]
    stages = []
    for k, start in enumerate(bounds):
        lo = order.index(start) + 1
        hi = order.index(cuts[k]) + 1 if k < len(cuts) else len(order)
        end = cuts[k] if k < len(cuts) else output.args[0]
        stages.append(_stage(gm, order[lo:hi], start, end, f"{type(model).__name__}Stage{k}"))
    cut_names = [names[n] for n in cuts]
    examples = [example] if example is not None else _example_inputs(model, gm.graph)
    errors = []
    for x in examples:
        try:
            measured = _measure_cuts(model, cut_names, stages, x)
        except Exception as exc:  # the model rejects this input size; try the next
            errors.append(f"{tuple(x.shape)}: {type(exc).__name__}: {exc}")
            continue
        return Spine(stages, measured)
    raise ValueError(f"could not run {type(model).__name__} on an example input to measure its cut points "
                     f"({'; '.join(errors)}); pass one: stitchlib.trace_spine(model, example)")


def _train_graph_differs(model: nn.Module, eval_names: dict) -> bool:
    """Whether forward() takes another path in train mode (`if self.training:`)."""
    tracer, was_training = _tracer(), model.training
    try:
        tracer.trace(model.train(), concrete_args=_concrete_args(model))
    except Exception:  # a path only train mode takes is untraceable: certainly different
        return True
    finally:
        model.train(was_training)
    return list(tracer.node_to_qualname.values()) != [n for n in eval_names.values()]
