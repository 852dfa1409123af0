"""Codebook collapse: the dead-code statistic from the first step, dead-code restarts, the uniform init, and the
train-log warning (pqgan.codebook_health)."""
import pytest
import torch

from pqgan import ProductQuantizer
from pqgan.codebook_health import CollapseMonitor


def _collapsed_batch(pq, n=512, seed=0):
    """n latents that all sit next to codeword 0 (one code used): (n, D) channel-last."""
    g = torch.Generator().manual_seed(seed)
    return pq.codebooks.detach()[0, 0].expand(n, -1) + 1e-3 * torch.randn(n, pq.dim, generator=g)


@pytest.mark.parametrize("ema", [None, 0.99])
def test_dead_codes_are_reported_from_the_first_step(ema):
    pq = ProductQuantizer(16, 1, 256, ema_decay=ema, channel_last=True).train()
    out = pq(_collapsed_batch(pq))
    assert out.stats.usage.item() == pytest.approx(1 / 256)
    assert out.stats.dead_codes.item() == 255                         # was 0 until ~690 steps
    for step in range(5):
        out = pq(_collapsed_batch(pq, seed=step + 1))
    assert out.stats.dead_codes.item() == 255
    # control: a batch that spreads over the codebook reports few dead codes
    spread = ProductQuantizer(16, 1, 256, ema_decay=ema, channel_last=True).train()
    g = torch.Generator().manual_seed(5)
    x = spread.codebooks.detach()[0][torch.randint(256, (4096,), generator=g)] + 1e-3 * torch.randn(4096, 16,
                                                                                                   generator=g)
    assert spread(x).stats.dead_codes.item() < 10


def test_running_usage_is_bias_corrected():
    pq = ProductQuantizer(4, 2, 8, ema_decay=None, channel_last=True).train()
    torch.testing.assert_close(pq.running_usage(), torch.ones(2, 8))     # before any step: the stored start
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    counts = pq._batch_counts(pq(x).indices.reshape(-1, 2))
    torch.testing.assert_close(pq.running_usage(), counts)             # after one step: exactly its counts
    assert pq.usage_steps.item() == 1
    pq.eval()(x)
    assert pq.usage_steps.item() == 1                                 # evaluation does not count


def test_dead_code_restarts_act_from_the_first_step():
    torch.manual_seed(0)
    pq = ProductQuantizer(16, 1, 256, ema_decay=None, dead_code_threshold=0.5, channel_last=True).train()
    before = pq.codebooks.detach().clone()
    x = _collapsed_batch(pq)
    pq(x)
    moved = (pq.codebooks.detach() - before).abs().sum(-1)[0] > 0
    assert moved.sum().item() >= 250                                  # the unused codes were re-seeded at once
    # re-seeded codes now sit on inputs of the batch
    reseeded = pq.codebooks.detach()[0][moved]
    assert (reseeded[:, None, :] == x[None]).all(-1).any(1).all()
    # and the next batch spreads over them: more than one code in use
    assert pq(x).stats.usage.item() > 0.1


def test_old_checkpoints_without_usage_steps_load():
    pq = ProductQuantizer(8, 2, 4, ema_decay=None)
    state = pq.state_dict()
    del state["usage_steps"]
    fresh = ProductQuantizer(8, 2, 4, ema_decay=None)
    fresh.load_state_dict(state)                                      # strict
    assert fresh.usage_steps.item() > 1000                             # their cluster_size has no start bias left


def test_uniform_init_is_taming_range():
    pq = ProductQuantizer(16, 1, 256, ema_decay=None, codebook_init="uniform")
    cb = pq.codebooks.detach()
    assert cb.abs().max().item() <= 1 / 256 and cb.std().item() > 0.5 / 256 / 3 ** 0.5
    with pytest.raises(ValueError, match="codebook_init"):
        ProductQuantizer(16, 1, 256, codebook_init="zeros")


def test_restarts_keep_a_gradient_trained_vq_from_collapsing():
    """Codebooks trained by gradient on latents much smaller than the N(0,1) init: without restarts a handful of
    codes take everything; with dead-code restarts (control = the same run without them) most codes are used."""
    g = torch.Generator().manual_seed(0)
    centres = 0.05 * torch.randn(64, 16, generator=g)

    def run(threshold):
        torch.manual_seed(1)
        pq = ProductQuantizer(16, 1, 64, ema_decay=None, dead_code_threshold=threshold, channel_last=True).train()
        opt = torch.optim.Adam(pq.parameters(), lr=1e-2)
        for step in range(60):
            x = centres[torch.randint(64, (256,), generator=g)] + 0.005 * torch.randn(256, 16, generator=g)
            out = pq(x)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
        return out.stats.usage.item()

    collapsed, restarted = run(0.0), run(0.5)
    assert collapsed < 0.2 and restarted > collapsed + 0.4


def test_collapse_monitor_warns_after_patience_and_not_on_a_healthy_run():
    mon = CollapseMonitor(256, patience=3)
    one_code = (torch.tensor([1.0]), torch.tensor([1 / 256]))
    assert mon.update(*one_code, positions=512) is None
    assert mon.update(*one_code, positions=512) is None
    msg = mon.update(*one_code, positions=512)
    assert msg is not None and "collapse" in msg and "1 of 256 codes" in msg and mon.collapsed
    assert mon.update(*one_code, positions=512) is None               # not every step
    healthy = CollapseMonitor(256, patience=3)
    for _ in range(10):
        assert healthy.update(torch.tensor([40.0]), torch.tensor([0.3]), positions=512) is None
    assert not healthy.collapsed
    # usage is judged against the codes a batch can reach: 8 of 16384 codes with 64 positions is not a collapse
    small_batch = CollapseMonitor(16384, patience=1)
    assert small_batch.update(torch.tensor([8.0]), torch.tensor([8 / 16384]), positions=64) is None
    mon.update(torch.tensor([40.0]), torch.tensor([0.3]), positions=512)
    assert not mon.collapsed                                           # a healthy step ends the streak
