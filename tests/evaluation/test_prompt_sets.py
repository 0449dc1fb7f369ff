"""Which prompts an evaluation answers (named sets, their halves) and the eval-steering command on a tiny model."""

from __future__ import annotations

import json

import pytest

from steering.cli import main
from steering.errors import SteeringError
from steering.evaluation import load_prompts, prompt_set_path
from steering.sae.formats import save_sae
from tests.support import tiny_sm


def test_load_prompts_skips_comments_and_blank_lines(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# header\n\nFirst?\n  Second.  \n# x\n")
    assert load_prompts(path) == ["First?", "Second."]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError):
        load_prompts(tmp_path / "empty.txt")


def test_prompt_sets_have_a_selection_and_a_check_half():
    select, check = load_prompts(prompt_set_path("neutral", "select")), load_prompts(prompt_set_path("neutral"))
    assert len(select) == len(check) == 46 and not {p.lower() for p in select} & {p.lower() for p in check}
    dogs_select, dogs_check = (load_prompts(prompt_set_path("dogs", h)) for h in ("select", "check"))
    assert len(dogs_check) >= 45 and not set(dogs_select) & set(dogs_check)
    assert all("dog" in p.lower() or "pupp" in p.lower() for p in dogs_select + dogs_check)
    assert prompt_set_path("food", "check").name == "food_eval.txt"  # the monitors' sets: check half named eval
    assert prompt_set_path("self", "check").name == "self_check.txt"
    for name, half, param in (("cats", "check", "prompt_set"), ("../x", "check", "prompt_set"),
                              ("neutral", "both", "half")):
        with pytest.raises(SteeringError) as err:
            prompt_set_path(name, half)
        assert err.value.param == param


def test_cli_eval_steering_json(tiny_model_dir, tiny_tokenizer, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True).eval()
    sae_dir = save_sae(tiny_sm(model, tiny_tokenizer).sae, tmp_path / "sae")
    preset = tmp_path / "probe.json"
    preset.write_text(json.dumps({"name": "probe", "features": [{"index": 3, "value": 5.0}], "concept_words": ["the"]}))
    args = ["eval-steering", "--preset", str(preset), "--model", str(tiny_model_dir), "--sae", str(sae_dir),
            "--max-tokens", "4", "--limit-prompts", "2", "--json", "--threads", "1"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["label"] == "probe" and out["n_prompts"] == 2 and out["concept_words"] == ["the"]
    assert out["concept_features"] == [3] and out["spec"]["features"][0]["index"] == 3
    assert (out["spec"]["positions"], out["spec"]["generated_limit"]) == ("all", None)
    # --generated-limit replaces the preset's window (positions default to all)
    assert main([*args, "--generated-limit", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["spec"]["positions"], out["spec"]["generated_limit"]) == ("all", 2)
    (tmp_path / "presets").mkdir()
    for name, idx in (("one", 3), ("two", 4)):
        (tmp_path / "presets" / f"{name}.json").write_text(json.dumps(
            {"name": name, "sae": "sae", "features": [{"index": idx, "value": 2.0}], "concept_words": ["e"]}))
    (tmp_path / "presets" / "elsewhere.json").write_text(json.dumps(
        {"name": "elsewhere", "sae": "another-sae", "features": [{"index": 1, "value": 2.0}]}))
    common = ["--model", str(tiny_model_dir), "--sae", str(sae_dir), "--max-tokens", "3", "--limit-prompts", "2",
              "--presets-dir", str(tmp_path / "presets")]
    assert main(["eval-steering", "--preset", "all", "--markdown", *common]) == 0
    captured = capsys.readouterr()
    table = captured.out.strip().splitlines()
    assert table[0].startswith("| preset |") and [ln.split("|")[1].strip() for ln in table[2:]] == ["one", "two"]
    assert "skipped" in captured.err and "elsewhere" in captured.err
    assert main(["eval-steering", "--preset", "one,two", "--json", *common]) == 0
    assert [r["label"] for r in json.loads(capsys.readouterr().out)] == ["one", "two"]
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"name": "o", "sae": "another-sae", "features": [{"index": 3, "value": 5.0}]}))
    assert main(["eval-steering", "--preset", str(bad), "--model", str(tiny_model_dir), "--sae", str(sae_dir)]) == 2
    assert "another-sae" in capsys.readouterr().err


def test_cli_eval_steering_groups_presets_by_prompt_set(tiny_model_dir, tiny_tokenizer, tmp_path, capsys):
    """`--preset all` answers each preset on its own prompt set's half (a suppression preset on its topic set),
    the report's defaults are the check half with seeds from 1000; the table says where each row was measured."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True).eval()
    sae_dir = save_sae(tiny_sm(model, tiny_tokenizer).sae, tmp_path / "sae")
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "more.json").write_text(json.dumps(
        {"name": "more", "features": [{"index": 3, "value": 2.0}], "concept_words": ["e"],
         "compare_prompt": "Say e."}))
    (tmp_path / "presets" / "less.json").write_text(json.dumps(
        {"name": "less", "features": [{"index": 4, "value": 0.0}], "concept_words": ["dog"], "goal": "suppress",
         "prompt_set": "dogs"}))
    common = ["--model", str(tiny_model_dir), "--sae", str(sae_dir), "--max-tokens", "3", "--limit-prompts", "2",
              "--presets-dir", str(tmp_path / "presets"), "--samples", "1", "--threads", "1"]
    assert main(["eval-steering", "--preset", "all", "--json", *common]) == 0
    less, more = json.loads(capsys.readouterr().out)
    assert (less["goal"], less["settings"]["prompt_set"], less["settings"]["half"]) == ("suppress", "dogs", "check")
    assert (more["goal"], more["settings"]["prompt_set"], more["settings"]["seed"]) == ("steer", "neutral", 1000)
    dog_check = load_prompts(prompt_set_path("dogs", "check"))
    assert [row["prompt"] for row in less["rows"]] == dog_check[:2]
    assert less["prompted"] is None and more["prompted"]["system_prompt"] == "Say e."
    assert main(["eval-steering", "--preset", "all", "--markdown", "--half", "select", *common]) == 0
    rows = capsys.readouterr().out.strip().splitlines()[2:]
    assert rows[0].startswith("| less (suppress) | dogs select, 2 answers |")
    assert rows[1].startswith("| more | neutral select, 2 answers |")
