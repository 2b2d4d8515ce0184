"""``fuse_model()``: an existing Keras model with its Conv -> BatchNormalization ->
LeakyReLU chains replaced by the fused layers of :mod:`pyae.layers`, weights carried over.

It reads the model's graph (Sequential or functional, nested models recursively), decides
per convolution whether the chain can be fused (and says why not in a :class:`FuseReport`),
and rebuilds the model with fused layers and copies of every other layer. A Conv2DTranspose
heading no chain that the output op computes (padding "same", sigmoid or linear, an image's
few channels: the tutorial models' output layer) becomes a ``FusedConv2DTranspose``. Also
importable from ``pyae.layers`` as before.
"""
import dataclasses

import keras

from pyae import ops as pyae_ops
from pyae.layers import (FusedConv2DTranspose, FusedConvBNLeakyReLU,
                         FusedConvTransposeBNLeakyReLU, _check_impl)

__all__ = ["FuseReport", "FusedChain", "ReplacedLayer", "fuse_model"]


@dataclasses.dataclass
class FusedChain:
    """One Conv -> BatchNormalization -> LeakyReLU chain replaced by a fused layer."""

    conv: str
    batch_norm: str
    activation: str
    fused: str
    fused_class: str
    folded_bias: bool

    def __str__(self):
        bias = " (conv bias folded into moving_mean)" if self.folded_bias else ""
        return (f"{self.conv} + {self.batch_norm} + {self.activation} -> "
                f"{self.fused} ({self.fused_class}){bias}")


@dataclasses.dataclass
class ReplacedLayer:
    """One Conv2DTranspose replaced on its own by a ``FusedConv2DTranspose``."""

    layer: str
    fused: str
    fused_class: str

    def __str__(self):
        return f"{self.layer} -> {self.fused} ({self.fused_class})"


@dataclasses.dataclass
class FuseReport:
    """What ``fuse_model`` fused, and each convolution it left alone with the reason."""

    model: str
    fused: list = dataclasses.field(default_factory=list)  # FusedChain
    not_fused: dict = dataclasses.field(default_factory=dict)  # conv name -> reason
    replaced: list = dataclasses.field(default_factory=list)  # ReplacedLayer
    # names inside nested models read "submodel/layer"

    def __str__(self):
        lines = [f"fuse_model({self.model!r}): fused {len(self.fused)} chain(s), replaced "
                 f"{len(self.replaced)} layer(s), left {len(self.not_fused)} convolution(s) "
                 "unfused"]
        lines += [f"  fused     {chain}" for chain in self.fused]
        lines += [f"  replaced  {layer}" for layer in self.replaced]
        lines += [f"  not fused {name}: {why}" for name, why in self.not_fused.items()]
        return "\n".join(lines)

    def merge(self, nested):
        """Add a nested model's report, its layer names prefixed with the model's."""
        for chain in nested.fused:
            self.fused.append(dataclasses.replace(
                chain, conv=f"{nested.model}/{chain.conv}",
                batch_norm=f"{nested.model}/{chain.batch_norm}",
                activation=f"{nested.model}/{chain.activation}",
                fused=f"{nested.model}/{chain.fused}",
            ))
        for name, reason in nested.not_fused.items():
            self.not_fused[f"{nested.model}/{name}"] = reason
        for layer in nested.replaced:
            self.replaced.append(dataclasses.replace(
                layer, layer=f"{nested.model}/{layer.layer}",
                fused=f"{nested.model}/{layer.fused}"))


_CONV_CLASSES = (keras.layers.Conv2D, keras.layers.Conv2DTranspose)


def _conv_reasons(conv):
    """Why a convolution layer, on its own, cannot become the head of a fused layer."""
    reasons = []
    activation = keras.activations.serialize(conv.activation)
    if activation not in (None, "linear"):
        reasons.append(f"activation={activation!r}")
    return reasons + _layout_reasons(conv)


def _layout_reasons(conv):
    """What a convolution has that no fused layer computes."""
    reasons = []
    if conv.data_format != "channels_last":
        reasons.append(f"data_format={conv.data_format!r}")
    if tuple(conv.dilation_rate) != (1, 1):
        reasons.append(f"dilation_rate={tuple(conv.dilation_rate)}")
    if getattr(conv, "groups", 1) != 1:
        reasons.append(f"groups={conv.groups}")
    if getattr(conv, "output_padding", None) is not None:
        reasons.append(f"output_padding={conv.output_padding}")
    if getattr(conv, "lora_enabled", False):
        reasons.append("LoRA is enabled")
    return reasons


def _batch_norm_reasons(batch_norm):
    reasons = []
    if batch_norm.axis not in (-1, 3):
        reasons.append(f"{batch_norm.name}: axis={batch_norm.axis}, not the channel axis -1")
    if batch_norm.renorm:
        reasons.append(f"{batch_norm.name}: renorm=True")
    if batch_norm.synchronized:
        reasons.append(f"{batch_norm.name}: synchronized=True")
    return reasons


def _follower_reasons(followers, wanted_class, wanted_name):
    """Reasons why a layer's ``followers`` are not exactly one ``wanted_class`` layer."""
    if not followers:
        return [f"no {wanted_name} follows"]
    if len(followers) > 1:
        names = ", ".join(f.name for f in followers)
        return [f"its output is used by {len(followers)} layers ({names})"]
    if not isinstance(followers[0], wanted_class):
        return [f"followed by {type(followers[0]).__name__} {followers[0].name!r}, "
                f"not {wanted_name}"]
    return []


def _chain_reasons(conv, batch_norm):
    """Reasons for a complete conv -> BN -> LeakyReLU chain that still can't be fused."""
    reasons = _batch_norm_reasons(batch_norm)
    flags = {layer.trainable for layer in (conv, batch_norm)}
    if len(flags) > 1:
        reasons.append(f"trainable differs ({conv.name}={conv.trainable}, "
                       f"{batch_norm.name}={batch_norm.trainable})")
    if conv.dtype_policy.name != batch_norm.dtype_policy.name:
        reasons.append(f"dtype policies differ ({conv.dtype_policy.name} vs "
                       f"{batch_norm.dtype_policy.name})")
    return reasons


def _fused_layer_for(conv, batch_norm, activation, impl):
    """A fused layer configured like the chain (not yet built)."""
    fused_class = (FusedConvTransposeBNLeakyReLU
                   if isinstance(conv, keras.layers.Conv2DTranspose) else FusedConvBNLeakyReLU)
    return fused_class(
        filters=conv.filters, kernel_size=tuple(conv.kernel_size), strides=tuple(conv.strides),
        padding=conv.padding, kernel_initializer=conv.kernel_initializer,
        kernel_regularizer=conv.kernel_regularizer, kernel_constraint=conv.kernel_constraint,
        momentum=batch_norm.momentum, epsilon=batch_norm.epsilon,
        center=batch_norm.center, scale=batch_norm.scale,
        beta_initializer=batch_norm.beta_initializer,
        gamma_initializer=batch_norm.gamma_initializer,
        moving_mean_initializer=batch_norm.moving_mean_initializer,
        moving_variance_initializer=batch_norm.moving_variance_initializer,
        beta_regularizer=batch_norm.beta_regularizer,
        gamma_regularizer=batch_norm.gamma_regularizer,
        beta_constraint=batch_norm.beta_constraint,
        gamma_constraint=batch_norm.gamma_constraint,
        negative_slope=float(activation.negative_slope),
        name=f"{conv.name}_fused", dtype=conv.dtype_policy, trainable=conv.trainable,
        impl=impl,
    )


def _copy_chain_weights(fused, conv, batch_norm):
    """Copy kernel and BN weights into a built fused layer, folding the conv bias."""
    fused.kernel.assign(conv.kernel)
    if batch_norm.scale:
        fused.gamma.assign(batch_norm.gamma)
    if batch_norm.center:
        fused.beta.assign(batch_norm.beta)
    moving_mean = keras.ops.convert_to_tensor(batch_norm.moving_mean)
    if conv.use_bias:
        moving_mean = moving_mean - keras.ops.cast(conv.bias, moving_mean.dtype)
    fused.moving_mean.assign(moving_mean)
    fused.moving_variance.assign(batch_norm.moving_variance)


def _chain_record(fused, conv, batch_norm, activation):
    return FusedChain(conv.name, batch_norm.name, activation.name, fused.name,
                      type(fused).__name__, bool(conv.use_bias))


def _output_layer_reasons(conv):
    """Why a Conv2DTranspose heading no chain cannot become a ``FusedConv2DTranspose``."""
    reasons = []
    if conv.padding != "same":
        reasons.append(f"padding={conv.padding!r}")
    activation = keras.activations.serialize(conv.activation)
    if activation not in (None,) + pyae_ops.OUTPUT_ACTIVATIONS:
        reasons.append(f"activation={activation!r}")
    if conv.filters > pyae_ops.MAX_AUTO_OUT_CHANNELS:
        reasons.append(f"filters={conv.filters}, more than the "
                       f"{pyae_ops.MAX_AUTO_OUT_CHANNELS} output channels the output op is "
                       "built for")
    return reasons + _layout_reasons(conv)


def _fused_output_layer(conv, report, impl):
    """A ``FusedConv2DTranspose`` configured like ``conv`` (recorded in ``report``), or None
    (the reason added to the conv's entry in ``report.not_fused``)."""
    reasons = _output_layer_reasons(conv)
    if reasons:
        report.not_fused[conv.name] += ("; not a FusedConv2DTranspose either: "
                                        + ", ".join(reasons))
        return None
    config = {**conv.get_config(), "name": f"{conv.name}_fused", "impl": impl}
    fused = FusedConv2DTranspose.from_config(config)
    del report.not_fused[conv.name]
    report.replaced.append(ReplacedLayer(conv.name, fused.name, type(fused).__name__))
    return fused


def _is_model(layer):
    return isinstance(layer, keras.Model)


def _clone_layer(layer, report, impl):
    """A copy of a non-fused layer (weights copied after it is built); models are fused, and
    a lone Conv2DTranspose the output op computes becomes a ``FusedConv2DTranspose``."""
    if _is_model(layer):
        fused_submodel, sub_report = fuse_model(layer, impl=impl)
        report.merge(sub_report)
        return fused_submodel
    if type(layer) is keras.layers.Conv2DTranspose:  # pylint: disable=unidiomatic-typecheck
        fused = _fused_output_layer(layer, report, impl)
        if fused is not None:
            return fused
    if not isinstance(layer, keras.layers.Layer):
        return layer  # a stateless keras op (e.g. keras.ops.reshape) in a functional graph
    return type(layer).from_config(layer.get_config())


def _copy_weights(pairs):
    for original, clone in pairs:
        if clone is not original and not _is_model(original) and original.weights:
            clone.set_weights(original.get_weights())


# ---- Sequential


def _sequential_chain_at(layers, index, report):
    """If a fusable chain starts at ``layers[index]``, return its three layers; else None."""
    conv = layers[index]
    if not isinstance(conv, _CONV_CLASSES):
        return None
    reasons = _conv_reasons(conv)
    batch_norm = layers[index + 1] if index + 1 < len(layers) else None
    activation = layers[index + 2] if index + 2 < len(layers) else None
    reasons += _follower_reasons([batch_norm] if batch_norm else [],
                                 keras.layers.BatchNormalization, "BatchNormalization")
    if not reasons:
        reasons += _follower_reasons([activation] if activation else [],
                                     keras.layers.LeakyReLU, "LeakyReLU")
        reasons = [f"{batch_norm.name}: {r}" for r in reasons]
    if not reasons:
        reasons += _chain_reasons(conv, batch_norm)
    if reasons:
        report.not_fused[conv.name] = ", ".join(reasons)
        return None
    return conv, batch_norm, activation


def _fuse_sequential(model, report, impl):
    layers, chains, copies = list(model.layers), [], []
    new_layers, index = [], 0
    while index < len(layers):
        chain = _sequential_chain_at(layers, index, report)
        if chain is not None:
            fused = _fused_layer_for(*chain, impl)
            chains.append((fused, chain))
            new_layers.append(fused)
            index += 3
            continue
        clone = _clone_layer(layers[index], report, impl)
        copies.append((layers[index], clone))
        new_layers.append(clone)
        index += 1
    model_input = model.inputs[0]
    fused_model = keras.Sequential(
        [keras.Input(batch_shape=model_input.shape, dtype=model_input.dtype)] + new_layers,
        name=model.name,
    )
    return fused_model, chains, copies


# ---- Functional


def _graph_nodes(model):
    """The model's call events in topological order (inputs first)."""
    depths = sorted(model._nodes_by_depth, reverse=True)  # pylint: disable=protected-access
    return [node for depth in depths for node in model._nodes_by_depth[depth]]  # noqa


def _consumers_by_tensor(nodes, model):
    """``id(tensor) -> list of layers`` using it; a model output counts as a use."""
    consumers = {}
    for node in nodes:
        for tensor in node.input_tensors:
            consumers.setdefault(id(tensor), []).append(node)
    for tensor in model.outputs:
        consumers.setdefault(id(tensor), []).append(None)
    return consumers


def _followers(node, consumers):
    """Nodes consuming ``node``'s single output (a ``None`` entry: it is a model output)."""
    return consumers.get(id(node.outputs[0]), [])


def _describe_followers(uses, wanted_class, wanted_name):
    if None in uses:
        others = [u.operation for u in uses if u is not None]
        if others:
            return [f"its output is used by {len(uses)} consumers (a model output and "
                    f"{', '.join(o.name for o in others)})"]
        return [f"no {wanted_name} follows"]
    return _follower_reasons([u.operation for u in uses], wanted_class, wanted_name)


def _batch_norm_node_reasons(bn_node, consumers, call_counts):
    """Why the BatchNormalization call ``bn_node`` can't be the middle of a chain."""
    batch_norm = bn_node.operation
    reasons = _describe_followers(_followers(bn_node, consumers), keras.layers.LeakyReLU,
                                  "LeakyReLU")
    fixed_kwargs = {k: v for k, v in bn_node.arguments.kwargs.items() if v is not None}
    if fixed_kwargs:
        reasons.append(f"called with {fixed_kwargs}")
    if call_counts[id(batch_norm)] > 1:
        reasons.append(f"called {call_counts[id(batch_norm)]} times (shared weights)")
    return [f"{batch_norm.name}: {reason}" for reason in reasons]


def _functional_chain_at(node, consumers, call_counts, report):
    """The (conv, bn, activation) nodes of a fusable chain headed by ``node``, or None."""
    conv = node.operation
    reasons = _conv_reasons(conv)
    if call_counts[id(conv)] > 1:
        reasons.append(f"called {call_counts[id(conv)]} times (shared weights)")
    uses = _followers(node, consumers)
    reasons += _describe_followers(uses, keras.layers.BatchNormalization, "BatchNormalization")
    if not reasons:
        reasons += _batch_norm_node_reasons(uses[0], consumers, call_counts)
    if not reasons:
        reasons += _chain_reasons(conv, uses[0].operation)
    if reasons:
        report.not_fused[conv.name] = ", ".join(reasons)
        return None
    bn_node = uses[0]
    return node, bn_node, _followers(bn_node, consumers)[0]


def _find_functional_chains(nodes, model, report):
    consumers = _consumers_by_tensor(nodes, model)
    call_counts = {}
    for node in nodes:
        call_counts[id(node.operation)] = call_counts.get(id(node.operation), 0) + 1
    chains = {}
    for node in nodes:
        if node.operation is not None and isinstance(node.operation, _CONV_CLASSES):
            chain = _functional_chain_at(node, consumers, call_counts, report)
            if chain is not None:
                chains[id(node)] = chain
    return chains


def _new_inputs(model):
    """Fresh Input tensors like the model's, keyed by the old tensors' ids."""
    mapping = {}
    for tensor in model.inputs:
        layer_name = tensor._keras_history.operation.name  # pylint: disable=protected-access
        mapping[id(tensor)] = keras.Input(
            batch_shape=tensor.shape, dtype=tensor.dtype, name=layer_name
        )
    return mapping


def _fuse_functional(model, report, impl):
    nodes = _graph_nodes(model)
    chain_by_head = _find_functional_chains(nodes, model, report)
    skipped = {id(n) for chain in chain_by_head.values() for n in chain[1:]}
    tensors = _new_inputs(model)
    new_inputs = [tensors[id(t)] for t in model.inputs]
    clones, chains = {}, []
    for node in nodes:
        if node.is_input or node.operation is None or id(node) in skipped:
            continue
        args, kwargs = node.arguments.fill_in(tensors)
        if id(node) in chain_by_head:
            conv_node, bn_node, act_node = chain_by_head[id(node)]
            layers = (conv_node.operation, bn_node.operation, act_node.operation)
            fused = _fused_layer_for(*layers, impl)
            tensors[id(act_node.outputs[0])] = fused(*args, **kwargs)
            chains.append((fused, layers))
            continue
        operation = node.operation
        if id(operation) not in clones:
            clones[id(operation)] = (operation, _clone_layer(operation, report, impl))
        outputs = clones[id(operation)][1](*args, **kwargs)
        for old, new in zip(node.outputs, keras.tree.flatten(outputs)):
            tensors[id(old)] = new
    outputs = [tensors[id(t)] for t in model.outputs]
    structure = model._outputs_struct  # pylint: disable=protected-access
    outputs = keras.tree.pack_sequence_as(structure, outputs)
    inputs = keras.tree.pack_sequence_as(model._inputs_struct, new_inputs)  # noqa
    fused_model = keras.Model(inputs, outputs, name=model.name)
    return fused_model, chains, list(clones.values())


def _check_fusable_model(model):
    if not isinstance(model, keras.Model):
        raise ValueError(f"fuse_model needs a keras.Model, got {type(model).__name__}")
    if not hasattr(model, "_nodes_by_depth") and not isinstance(model, keras.Sequential):
        raise ValueError(
            f"fuse_model needs a functional or Sequential model; {model.name!r} is a "
            f"subclassed {type(model).__name__} (its graph of layers is not known)"
        )
    if not model.built or not model.inputs:
        raise ValueError(f"fuse_model needs a built model with known inputs; "
                         f"{model.name!r} is not built")


def fuse_model(model, impl="auto"):
    """Replace every Conv2D/Conv2DTranspose -> BatchNormalization -> LeakyReLU chain, and
    a lone output Conv2DTranspose.

    Returns ``(fused_model, report)``. The fused model is a new functional or Sequential
    model (the original is untouched): each fusable chain becomes a
    ``FusedConvBNLeakyReLU`` / ``FusedConvTransposeBNLeakyReLU`` (with the given ``impl``)
    carrying the trained weights (a conv bias is folded into the moving mean: BN of
    ``z + b`` with moving mean ``m`` is BN of ``z`` with ``m - b``); every other layer is
    copied with its weights; nested functional/Sequential models are fused recursively.
    A chain is the conv (activation None/linear, channels_last, no dilation, groups 1),
    a BatchNormalization (axis -1, no renorm) using the conv's output alone, and a
    LeakyReLU using the BN's output alone. In inference the outputs equal the original's
    within float32 tolerance. A Conv2DTranspose that heads no chain becomes a
    ``FusedConv2DTranspose`` (same weights) where the output op computes it: padding "same",
    activation sigmoid/linear/None, at most ``pyae.ops.MAX_AUTO_OUT_CHANNELS`` filters (an
    image's channels, as the tutorial models' output layer), channels_last, no dilation or
    output_padding. ``report`` (a ``FuseReport``) lists the fused chains, the replaced layers
    and, for every convolution left alone, why.
    """
    _check_fusable_model(model)
    _check_impl(impl)
    report = FuseReport(model=model.name)
    if isinstance(model, keras.Sequential):
        fused_model, chains, copies = _fuse_sequential(model, report, impl)
    else:
        fused_model, chains, copies = _fuse_functional(model, report, impl)
    for fused, (conv, batch_norm, activation) in chains:
        _copy_chain_weights(fused, conv, batch_norm)
        report.fused.append(_chain_record(fused, conv, batch_norm, activation))
    _copy_weights(copies)
    return fused_model, report
