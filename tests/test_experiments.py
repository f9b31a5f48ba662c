"""The multi-seed runner of Chapters 6 and 7: seeded, so pooled and sequential runs give the same numbers."""
import math

from ppo_edu import PPO, PRESETS
from ppo_edu.experiments import change_label, train_seeds


def test_change_label_names_the_changes():
    assert change_label({}) == "preset"
    assert change_label({"n_epochs": 4, "vf_clip": 0.2}) == "n_epochs=4, vf_clip=0.2"


def test_pooled_and_sequential_runs_agree_with_one_plain_run():
    changes = {"preset": {}, "norm_adv=False": {"norm_adv": False}}
    pooled = train_seeds("CartPole-v1", changes, [0, 1], 256, n_eval=2, progress_bar=False)
    alone = train_seeds("CartPole-v1", changes, [0, 1], 256, n_eval=2, workers=1, evaluations=(True, False),
                        progress_bar=False)
    assert list(pooled) == list(changes) and all(len(v) == 2 for v in pooled.values())
    cfg = PRESETS["CartPole-v1"][0].replace(norm_adv=False)
    agent = PPO("CartPole-v1", cfg, seed=1).learn(256)
    for runs in (pooled, alone):
        history, greedy = runs["norm_adv=False"][1][:2]
        no_clock = lambda rows: [{k: v for k, v in row.items() if k != "wall_time"} for row in rows]  # noqa: E731
        assert no_clock(history) == no_clock(agent.history)
        assert math.isclose(greedy, agent.evaluate(2)[0])
    assert len(alone["preset"][0]) == 3  # history, greedy and sampled returns


def test_a_callback_reaches_every_update():
    def mark(agent, row):
        row["marked"] = True

    budget = 2 * PRESETS["CartPole-v1"][0].batch_size  # two updates of the preset
    (history, _), = train_seeds("CartPole-v1", {"preset": {}}, [0], budget, callback=mark, n_eval=1,
                                progress_bar=False)["preset"]
    assert len(history) == 2 and all(row["marked"] for row in history)
