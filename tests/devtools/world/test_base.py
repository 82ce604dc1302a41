"""The world base's training task: its timestep draw."""
import torch

from devtools.world import base


def _task(power: float) -> base.BaseTask:
    return base.BaseTask(torch.nn.Identity(), torch.nn.Identity(), torch.zeros(1, 4), timestep_power=power)


def test_a_power_of_one_keeps_the_uniform_draw_of_the_full_schedule_exactly():
    drawn = _task(1.0).draw_timesteps(512, torch.Generator().manual_seed(3))
    assert torch.equal(drawn, torch.randint(0, 1000, (512,), generator=torch.Generator().manual_seed(3)))


def test_a_power_under_one_draws_more_high_noise_steps():
    drawn = _task(0.5).draw_timesteps(20000, torch.Generator().manual_seed(0)).float()
    assert drawn.min() >= 0 and drawn.max() <= 999
    # t = T u^0.5: P(t >= T/2) = 3/4 against 1/2 uniform; mean 2T/3 against T/2
    assert abs((drawn >= 500).float().mean().item() - 0.75) < 0.02
    assert abs(drawn.mean().item() - 666) < 10
