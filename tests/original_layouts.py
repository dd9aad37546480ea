"""The module layouts of the originals, for tests that load their checkpoints: the names and
order of their submodules (what a state_dict records), not their kernels."""
import torch


class OriginalGFGP(torch.nn.AvgPool2d):
    """The layout of GFGP's MaxEntPoolingCuda2d (its modules and names, not its kernel): an
    AvgPool2d with a ``ToParam`` branch and a separate ``activation``."""

    def __init__(self, num_features, kernel_size, stride=None, padding=0, ceil_mode=False,
                 activation="sigmoid", hidden_node=None):
        hidden_node = num_features // 2 if hidden_node is None else hidden_node
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad=False)
        self.ToParam = torch.nn.Sequential(
            torch.nn.AdaptiveAvgPool2d((1, 1)), torch.nn.Conv2d(num_features, hidden_node, 1),
            torch.nn.BatchNorm2d(hidden_node), torch.nn.ReLU(False),
            torch.nn.Conv2d(hidden_node, num_features, 1), torch.nn.BatchNorm2d(num_features))
        self.activation = torch.nn.Softplus() if activation == "softplus" else torch.nn.Sigmoid()
