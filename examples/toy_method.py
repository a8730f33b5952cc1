"""A user's search method as a plug-in: `stablenas --plugin examples/toy_method.py search ...`."""
from pydantic import Field

from stablenas import Method, MethodOptions, register_method


class ToyOptions(MethodOptions):
    temperature: float = Field(2.0, gt=0)  # weight steps mix with softmax(alpha / T)


@register_method
class Toy(Method):
    name = "toy"
    description = "weight steps see a flatter mix, softmax(alpha / T); records the op-weight entropy"
    Options = ToyOptions

    def transform(self, search, mix, phase, batch):
        if phase != "weights":
            return mix
        op = {ct: w ** (1 / self.opts.temperature) for ct, w in mix.op.items()}  # masked slots stay 0
        return mix.replace(op={ct: w / w.sum(-1, keepdim=True) for ct, w in op.items()})

    def on_epoch_end(self, search, epoch, record):
        w = search.arch.op_weights(detach=True)  # values to record: no autograd graph
        record["toy_entropy"] = float(sum(-(p * p.clamp_min(1e-12).log()).sum() for p in w.values()))
