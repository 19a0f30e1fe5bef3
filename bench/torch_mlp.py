# What the PyTorch peers of weft's training benches share (training_torch.py,
# ddp_torch.py): the MLP of bench_training.cpp and bench/dp_common.hpp
# (784-256-256-10, ReLU), random data and the batches cycled through it.
import torch


def mlp():
    return torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                               torch.nn.ReLU(), torch.nn.Linear(256, 10))


def random_data(n):
    """n images of 784 uniform pixels and their labels 0..9."""
    return torch.rand(n, 784), torch.randint(0, 10, (n,))


class Batches:
    """`batch` rows at a time in order, starting over when the next batch would run past the end."""

    def __init__(self, data, batch):
        (self.images, self.labels), self.batch, self.pos = data, batch, 0

    def next(self):
        if self.pos + self.batch > len(self.images):
            self.pos = 0
        lo, self.pos = self.pos, self.pos + self.batch
        return self.images[lo:self.pos], self.labels[lo:self.pos]
