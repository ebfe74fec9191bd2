"""bench/quality.py's report and record plumbing on synthetic records (the real study is in QUALITY.md).

The tables must come from the raw records alone: mean ± sample std over seeds, the mean over notions taken per seed
first, the goal test (> 2 std of the larger seed spread), and the learning curves read from metrics.jsonl's
``eval/<task>/<metric>`` entries.
"""
from __future__ import annotations

import json
import os
import statistics

import pytest

from bench import quality


def _record(config, seed, notion_scores, heldout=None, variant="", curve=None):
  r = dict(config=config, seed=seed, variant=variant, notions=dict(zip(quality.NOTION_TASKS, notion_scores)),
           train_s=100.0 + seed, eval_notions_s=10.0, eval_heldout_s=20.0)
  if heldout is not None:
    r["heldout"] = dict(zip(quality.HELDOUT_NAMES, heldout))
  if curve:
    r["curve"] = curve
  return r


@pytest.fixture
def results(tmp_path):
  folder = tmp_path / "results"
  folder.mkdir()
  recs = []
  for seed in range(3):
    recs.append(_record("pretrained", seed, [0.5, 0.6, 0.7, 0.8], [0.8] * 7))
    recs.append(_record("ft_instr", seed, [0.70 + 0.01 * seed, 0.9, 0.8, 0.9], [0.82] * 7))
    recs.append(_record("ft_noinstr", seed, [0.60 - 0.01 * seed, 0.7, 0.75, 0.8], [0.81] * 7))
  recs[1]["curve"] = [{"step": 50, **dict(zip(quality.NOTION_TASKS, [0.6, 0.7, 0.8, 0.9]))}]
  for r in recs:
    (folder / f"{quality.run_name(r['config'], r['seed'])}.json").write_text(json.dumps(r))
  (folder / "notes.json").write_text(json.dumps({"not": "a record"}))   # ignored
  return str(folder), recs


def test_summary_means_over_notions_per_seed(results):
  folder, recs = results
  s = quality.summarize(quality.load_records(folder))
  assert set(s) == {"pretrained", "ft_instr", "ft_noinstr"} and s["ft_instr"]["seeds"] == [0, 1, 2]
  per_seed = [statistics.mean(r["notions"].values()) for r in recs if r["config"] == "ft_instr"]
  m, sd, n = s["ft_instr"]["notions_mean"]
  assert n == 3 and m == pytest.approx(statistics.mean(per_seed)) and sd == pytest.approx(statistics.stdev(per_seed))
  assert s["pretrained"]["notions"]["stereoset_label"] == (0.5, 0.0, 3)
  g = quality.goal(s)
  assert g["beats_noinstr"] and g["beats_pretrained"]
  assert g["gap"] == pytest.approx(s["ft_instr"]["notions_mean"][0] - s["ft_noinstr"]["notions_mean"][0])


def test_goal_fails_within_the_spread():
  s = quality.summarize([_record("ft_instr", i, [0.5 + 0.05 * i] * 4) for i in range(3)]
                        + [_record("ft_noinstr", i, [0.5 + 0.05 * (2 - i) - 0.01] * 4) for i in range(3)])
  g = quality.goal(s)
  assert g["gap"] == pytest.approx(0.01) and not g["beats_noinstr"] and "beats_pretrained" not in g


def test_report_tables(results):
  folder, _ = results
  md = quality.report(folder)
  assert "### Conflicting notions" in md and "### Standard held-out tasks" in md and "### Learning curves" in md
  assert "| `ft_instr` | 0,1,2 | 71.00 ± 1.00 | 90.00 ± 0.00 |" in md
  assert "> 2 std: **yes**" in md and "| 50 | 60.00 | 70.00 | 80.00 | 90.00 | 75.00 |" in md


def test_read_curve_and_last_metrics(tmp_path):
  lines = [{"step": 10, "loss": 1.0}, {"step": 20, "loss": 0.5, "eval/stereoset_label/accuracy": 0.6,
                                       "eval/sick_relatedness/cosine_spearman": 0.7, "eval/seconds": 3.0},
           {"step": 40, "eval/stereoset_label/accuracy": 0.65}]
  (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
  assert quality.read_curve(str(tmp_path)) == [{"step": 20, "stereoset_label": 0.6, "sick_relatedness": 0.7},
                                               {"step": 40, "stereoset_label": 0.65}]
  assert quality.last_metrics(str(tmp_path))["step"] == 20
  assert quality.read_curve(str(tmp_path / "missing")) == []


def test_names_and_cli_checks(tmp_path, capsys):
  assert quality.run_name("ft_instr", 2) == "ft_instr-s2"
  v = quality.variant_of([("loss.temperature", "0.02")])
  assert v == "temperature=0.02" and quality.run_name("ft_instr", 0, v) == "ft_instr@temperature=0.02-s0"
  with pytest.raises(SystemExit):
    quality.main(["--shared", str(tmp_path)])                    # --out missing
  with pytest.raises(SystemExit, match="not found|no pretrained model"):
    quality.main(["--out", str(tmp_path / "o"), "--shared", str(tmp_path / "nowhere")])
  quality.main(["--report", str(tmp_path)])                      # an empty folder: a table with no rows
  assert "Records: 0" in capsys.readouterr().out
  assert os.path.basename(quality.DEFAULT_RESULTS) == "quality-2026-12-06"


def test_curve_start_is_step_0_of_the_curves(results, tmp_path):
  folder, _ = results
  outs = []
  for i, key in enumerate(("instr", "noinstr")):
    out = tmp_path / key
    out.mkdir()
    (out / "summary.json").write_text(json.dumps({"tasks": [{"task": t, "score": 0.1 * (i + 1)}
                                                            for t in quality.NOTION_TASKS]}))
    outs.append(str(out))
  start = quality.write_curve_start(outs, folder)
  assert start["ft_noinstr"]["stereoset_label"] == pytest.approx(0.2)
  assert "| 0 | 10.00 | 10.00 | 10.00 | 10.00 | 10.00 |" in quality.report(folder)


def test_ablation_folder_is_reported_apart(results, tmp_path):
  folder, _ = results
  abl = tmp_path / "ablation"
  abl.mkdir()
  for seed in (0, 1):
    for config, score in (("ft_instr", 0.9), ("ft_noinstr", 0.6 + 0.1 * seed)):
      r = _record(config, seed, [score] * 4, variant="num_train_steps=200")
      (abl / f"{quality.run_name(config, seed, r['variant'])}.json").write_text(json.dumps(r))
  md = quality.report(folder, str(abl))
  main, ablation = md.split("### Ablation", 1)
  assert "@num_train_steps=200" not in main.split("Per run")[0]  # the main table holds the >= 3-seed configurations
  assert "| `ft_instr@num_train_steps=200` | 0,1 | 90.00 ± 0.00 |" in ablation
  assert ("Ablation `ft_instr@num_train_steps=200` (n=2) - `ft_noinstr@num_train_steps=200` (n=2): +25.00 points = "
          "3.5 x the larger seed std (7.07).") in ablation
