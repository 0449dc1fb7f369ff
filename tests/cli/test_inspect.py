"""`python -m steering inspect`: the features per token, as a table and as JSON."""

from __future__ import annotations

import json

from steering.cli import main
from steering.sae import save_sae
from tests.support import tiny_sm


def test_inspect_prints_every_token(tiny_model_dir, tiny_llama, tiny_tokenizer, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True).eval()
    sae_dir = save_sae(tiny_sm(model, tiny_tokenizer).sae, tmp_path / "sae")
    common = ["--model", str(tiny_model_dir), "--sae", str(sae_dir), "--threads", "1"]
    assert main(["inspect", "dog park", "--top-k", "2", "--feature", "3", "--json", *common]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [t["token"] for t in out["tokens"]] == list("dog park")  # byte tokens, the sink left out
    assert all(len(t["top"]) <= 2 and [f["index"] for f in t["named"]] == [3] for t in out["tokens"])
    assert main(["inspect", "dog park", "--chat", *common]) == 0
    table = capsys.readouterr().out
    assert "summary (by total activation)" in table and "'k'" in table
    assert main(["inspect", "x", "--top-k", "0", *common]) == 2  # reads nothing: an error naming top_k
    assert "inspect.top_k" in capsys.readouterr().err
