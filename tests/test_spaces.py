"""Named search spaces: validation, and conversion to Optuna's and Tune's distributions."""

from __future__ import annotations

import pytest

pytest.importorskip("optuna")
pytest.importorskip("ray")
from search_spaces import SpaceError, load_space, to_tune, tune_points, validate


def test_optuna_distributions_equal_rays_conversion():
    from ray.tune.search.optuna import OptunaSearch

    from search_spaces import to_optuna

    for name in ("default", "smoke", "seeds-qwen2", "dpo", "dpo-smoke"):
        space = load_space(name)
        assert to_optuna(space) == OptunaSearch.convert_search_space(to_tune(space))
    ints = {"train": {"steps": {"randint": [4, 8]}}}
    assert to_optuna(ints) == OptunaSearch.convert_search_space(to_tune(ints))


def test_builtin_spaces_are_valid_and_convert():
    for name in ("default", "smoke", "seeds-qwen2", "dpo", "dpo-smoke"):
        space = load_space(name)
        converted = to_tune(space)
        assert "lora.rank" in converted  # dotted TrialConfig names, the same all the way
    default = load_space("default")
    assert default["lora"]["rank"] == {"choice": [1, 2, 4, 8, 16, 32, 64]}
    assert default["quant"]["bits"] == {"choice": [4, 8, 16]}
    assert default["lora"]["targets"] == {"choice": ["qv", "qkvo", "all-linear"]}
    seeds = load_space("seeds-qwen2")  # the reports' setting: Qwen2-0.5B, wikitext-2, q and v first
    assert (seeds["model"]["name"], seeds["data"]["source"]) == ("Qwen/Qwen2-0.5B", "wikitext-2")
    assert tune_points(seeds)[0]["lora.targets"] == "qv"


@pytest.mark.parametrize(
    "space, message",
    [
        ({"lora": {"rank": {"choice": []}}}, "non-empty list"),
        ({"lora": {"rank": {"choice": [[1, 2]]}}}, "scalars or strings"),
        ({"train": {"lr": {"loguniform": [0, 1]}}}, "0 < low < high"),
        ({"lora": {"rank": {"gauss": [1, 2]}}}, "unknown distribution"),
        ({"lora": {"rank": {"choice": [0, 8]}}}, "lora.rank must be a positive integer"),
        ({"lora": {"rnk": 8}}, "unknown config key lora.rnk"),
        (
            {"lora": {"rank": {"choice": [4, 8]}}, "points_to_evaluate": [{"lora.alpha": 1}]},
            "not a searched parameter",
        ),
    ],
)
def test_bad_spaces_name_the_problem(space, message):
    with pytest.raises(SpaceError, match=message):
        validate(space)


def test_points_to_evaluate_fill_every_searched_key():
    space = {
        "lora": {"rank": {"choice": [4, 8]}, "targets": {"choice": ["qv", "all-linear"]}},
        "points_to_evaluate": [{"lora.rank": 8}],
    }
    validate(space)
    assert tune_points(space) == [{"lora.rank": 8, "lora.targets": "qv"}]
