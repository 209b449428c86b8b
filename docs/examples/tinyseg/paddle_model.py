"""docs/examples/tinyseg/torch_model.py after ``paconvert`` and the hand fixes of
docs/align_your_model.md.

The model and ``model()`` are PaConvert 3.3.1's output unchanged. PaConvert's optimiser did
not run (``paddle.optimizer.SGD`` with torch's arguments, ``PolynomialLR`` marked ``>>>>>>``)
and it converted the loss literally; the factories keep each stage of the story so that every
command of the guide runs as written:

- ``loss_as_converted``: PaConvert's ``cross_entropy`` (no ``axis=1``: silently wrong here);
- ``optimizer_as_written``: the optimiser a user writes by hand from the torch code (group
  ``"lr"`` key, ``PolynomialDecay`` defaults);
- ``optimizer_group_fixed``: the group fixed, ``end_lr`` still Paddle's default 1e-4;
- ``loss`` / ``optimizer``: the final, aligned port.
"""

import paddle

NUM_CLASSES = 16


class TinySeg(paddle.nn.Module):
    def __init__(self, num_classes=NUM_CLASSES):
        super().__init__()
        self.stem = paddle.nn.Sequential(
            paddle.nn.Conv2d(3, 16, 3, padding=1, bias=False),
            paddle.nn.BatchNorm2D(num_features=16),
            paddle.nn.ReLU(),
        )
        self.down = paddle.nn.Sequential(
            paddle.nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False),
            paddle.nn.BatchNorm2D(num_features=32),
            paddle.nn.ReLU(),
        )
        self.up = paddle.nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.fuse = paddle.nn.Sequential(
            paddle.nn.Conv2d(48, 16, 3, padding=1, bias=False),
            paddle.nn.BatchNorm2D(num_features=16),
            paddle.nn.ReLU(),
        )
        self.head = paddle.nn.Conv2d(16, num_classes, 1)

    def forward(self, x):
        s = self.stem(x)
        d = self.up(self.down(s))
        return self.head(self.fuse(paddle.cat([d, s], dim=1)))


def model():
    paddle.manual_seed(0)
    return TinySeg()


def loss_as_converted(output, target):
    return paddle.nn.functional.cross_entropy(input=output, label=target)


def loss(output, target):
    # Paddle's class axis defaults to -1; NCHW logits need axis=1.
    return paddle.nn.functional.cross_entropy(input=output, label=target, axis=1)


class _ScheduledMomentum(paddle.optimizer.Momentum):
    """Momentum that steps its learning-rate schedule after each step (the torch file's habit)."""

    def step(self):
        super().step()
        self._learning_rate.step()


def _split(model):
    head = list(model.head.parameters())
    head_ids = {id(p) for p in head}
    return [p for p in model.parameters() if id(p) not in head_ids], head


def optimizer_as_written(model):
    backbone, head = _split(model)
    schedule = paddle.optimizer.lr.PolynomialDecay(learning_rate=0.1, decay_steps=2, power=1.0)
    groups = [{"params": backbone, "lr": 0.01}, {"params": head}]
    return _ScheduledMomentum(learning_rate=schedule, momentum=0.9, parameters=groups)


def optimizer_group_fixed(model):
    backbone, head = _split(model)
    schedule = paddle.optimizer.lr.PolynomialDecay(learning_rate=0.1, decay_steps=2, power=1.0)
    # Paddle reads a group's "learning_rate" as a multiplier of the global rate ("lr" is ignored).
    groups = [{"params": backbone, "learning_rate": 0.1}, {"params": head}]
    return _ScheduledMomentum(learning_rate=schedule, momentum=0.9, parameters=groups)


def optimizer(model):
    backbone, head = _split(model)
    # torch's PolynomialLR decays to 0; Paddle's PolynomialDecay to end_lr=1e-4 unless told.
    schedule = paddle.optimizer.lr.PolynomialDecay(learning_rate=0.1, decay_steps=2, end_lr=0.0, power=1.0)
    groups = [{"params": backbone, "learning_rate": 0.1}, {"params": head}]
    return _ScheduledMomentum(learning_rate=schedule, momentum=0.9, parameters=groups)
