"""npool.torch under DistributedDataParallel: 2 gloo processes on 127.0.0.1 train a model with
SoftPool2d and a NetVLAD whose BatchNorms convert_sync_batchnorm made SyncBatchNorms (the
masked one keeps its mask); the parameters must agree across ranks, and the synced masked
statistics must equal those of the whole batch on one process."""
import os
import socket

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

import npool.torch as nt  # noqa: E402


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 6, 3, padding=1)
        self.pool = nt.SoftPool2d(2)
        self.vlad = nt.NetVLAD(feature_size=6, max_samples=16, cluster_size=3, output_dim=4)

    def forward(self, x, mask):
        features = self.pool(self.conv(x)).flatten(2).transpose(1, 2)  # (B, 16, 6)
        return self.vlad(features, mask)


def _data(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 1, 8, 8, generator=g)
    mask = torch.rand(8, 16, generator=g) > 0.3
    return x, mask, (x.mean((1, 2, 3)) > 0).long()


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    x, mask, y = _data(1)
    shard = slice(rank * 4, rank * 4 + 4)  # each rank half of the batch
    # DDP on the CPU (gloo): SoftPool2d and NetVLAD train, the ranks stay in step.
    torch.manual_seed(0)
    model = Model()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(ddp(x[shard], mask[shard])[:, :2], y[shard])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()},
               f"{out}/ddp{rank}.pt")
    # convert_sync_batchnorm: the masked BatchNorm becomes a SyncBatchNorm that still takes
    # the mask, its statistics summed over both ranks' real samples (DDP itself refuses
    # SyncBatchNorm on CPU modules, so the synced layer runs in the process group directly).
    torch.manual_seed(0)
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(Model())
    features = synced.pool(synced.conv(x[shard])).flatten(2).transpose(1, 2)
    synced.vlad(features, mask[shard]).sum().backward()
    torch.save({"running_mean": synced.vlad.cluster_bn.running_mean.clone(),
                "running_var": synced.vlad.cluster_bn.running_var.clone(),
                "gating_mean": synced.vlad.context_gating.gating_bn.running_mean.clone()},
               f"{out}/sync{rank}.pt")
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_and_convert_sync_batchnorm(tmp_path):
    torch.multiprocessing.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2,
                                join=True)
    ddp = [torch.load(tmp_path / f"ddp{r}.pt") for r in range(2)]
    for key in ddp[0]:
        if "running" in key or "num_batches" in key:
            continue  # unsynced BatchNorm statistics are per rank
        torch.testing.assert_close(ddp[0][key], ddp[1][key], rtol=0, atol=0, msg=key)
    assert not torch.equal(ddp[0]["conv.weight"], Model().conv.weight)  # it trained
    sync = [torch.load(tmp_path / f"sync{r}.pt") for r in range(2)]
    for key in sync[0]:
        torch.testing.assert_close(sync[0][key], sync[1][key], msg=key)
    # one process on the whole batch: the same statistics as the two synced halves
    torch.manual_seed(0)
    single = Model()
    x, mask, _ = _data(1)
    single(x, mask)
    torch.testing.assert_close(sync[0]["running_mean"], single.vlad.cluster_bn.running_mean)
    torch.testing.assert_close(sync[0]["running_var"], single.vlad.cluster_bn.running_var)
    torch.testing.assert_close(sync[0]["gating_mean"],
                               single.vlad.context_gating.gating_bn.running_mean)
