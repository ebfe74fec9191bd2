"""bench/notions.py on tiny synthetic StereoSet / SICK inputs written here (CI has no ../shared).

What must hold: the split is by text (no held-out text in any training record), the hard negative of one notion is
the positive of the conflicting one, ``train_noinstr.json`` differs only by empty instructions, and the evaluation
folders are local tasks that ``instructor_jax.evaluation.local`` recognises with the notion's instruction.
"""
from __future__ import annotations

import csv
import json
import os

import pytest

from bench import notions

LABELS = ("stereotype", "anti-stereotype", "unrelated")


def _stereoset_files(folder, per_domain=12):
  os.makedirs(folder, exist_ok=True)
  for d, name in notions.STEREOSET.items():
    inst = []
    for i in range(per_domain // 3):
      for label in LABELS:
        inst.append({"input": f"Target: {d}{i} \nThe {d}{i} person came in. It was {label} number {i}.",
                     "output": [label]})
    with open(os.path.join(folder, name + ".json"), "w") as f:
      json.dump({"Definition": ["d"], "Instances": inst}, f)


def _sick_files(folder, n=60):
  os.makedirs(folder, exist_ok=True)
  judgments = ("ENTAILMENT", "CONTRADICTION", "NEUTRAL")
  # distinct unordered pairs: sentence a with a + k (k = 1..9, never both (a, b) and (b, a)); k sets the judgment
  rows = [(i, f"sentence {i % 20}", f"sentence {(i % 20 + 1 + i // 20 % 9) % 20}", [4.5, 4.0, 1.5][i // 20 % 3],
           judgments[i // 20 % 3]) for i in range(min(n, 180))]
  for k, name in enumerate(notions.SICK_FILES):
    with open(os.path.join(folder, name), "w") as f:
      f.write("pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n")
      for r in rows[k::3]:
        f.write("\t".join(map(str, r)) + "\n")


@pytest.fixture
def built(tmp_path):
  _stereoset_files(str(tmp_path / "super-ni"), per_domain=30)
  _sick_files(str(tmp_path / "sick"), n=300)
  items = notions.read_stereoset(str(tmp_path / "super-ni"))
  pairs = notions.read_sick(str(tmp_path / "sick"))
  sick_texts = sorted({s for p in pairs for s in (p["a"], p["b"])})
  derived = [{"query": ["Represent the sentence;", sick_texts[i]], "pos": ["Represent the sentence;", f"d{i}"],
              "neg": ["Represent the sentence;", f"e{i}"], "task_name": "sick_train_entailment"} for i in range(5)]
  out = str(tmp_path / "out")
  report = notions.build(out, stereoset_items=items, sick_pairs=pairs, derived=derived, per_notion=50, max_test=0)
  return out, report, items, pairs


def test_readers(tmp_path):
  _stereoset_files(str(tmp_path / "s"))
  items = notions.read_stereoset(str(tmp_path / "s"))
  assert len(items) == 4 * 12 and {it["domain"] for it in items} == set(notions.STEREOSET)
  assert items[0]["text"].startswith("Target: gender0 | The gender0 person came in.")
  assert items[0]["context"] == items[1]["context"]   # an item's continuations share a context
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "SICK_train.txt").write_text("pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n"
                                      "1\ta\tb\tnot-a-number\tNEUTRAL\n")
  with pytest.raises(ValueError, match=r"SICK_train.txt:2: bad SICK row"):
    notions.read_sick(str(bad))


def test_split_by_text_and_conflict(built):
  out, report, items, pairs = built
  train = json.load(open(os.path.join(out, "train_instr.json")))
  assert report["heldout_texts_in_training"] == 0 and report["train_records"] == len(train)
  assert {r["task_name"] for r in train} >= set(notions.NOTIONS)
  trained = {r[s][1] for r in train for s in ("query", "pos", "neg")}
  by_text = {it["text"]: it for it in items}
  held = set()
  for split in ("dev", "test"):
    for notion in ("stereoset_label", "stereoset_domain"):
      with open(os.path.join(out, "eval", split, notion, f"{split}.csv")) as f:
        held |= {row["text"] for row in csv.DictReader(f)}
    with open(os.path.join(out, "eval", split, "sick_relatedness", f"{split}.csv")) as f:
      held |= {row[k] for row in csv.DictReader(f) for k in ("sentence1", "sentence2")}
  assert held and not (held & trained)
  # the derived records whose texts are held-out SICK sentences are dropped
  assert report["derived_kept"] + report["derived_dropped"] == 5
  for r in train:
    if r["task_name"] == "stereoset_label":
      q, p, n = (by_text[r[s][1]] for s in ("query", "pos", "neg"))
      assert p["label"] == q["label"] != n["label"] and p["domain"] != q["domain"] == n["domain"]
      assert r["query"][0] == notions.NOTIONS["stereoset_label"]
    elif r["task_name"] == "stereoset_domain":
      q, p, n = (by_text[r[s][1]] for s in ("query", "pos", "neg"))
      assert p["domain"] == q["domain"] != n["domain"] and p["label"] != q["label"] == n["label"]
  judg = {}
  for p in pairs:
    judg[(p["a"], p["b"])] = judg[(p["b"], p["a"])] = p
  ent = [r for r in train if r["task_name"] == "sick_entailment"]
  assert ent and all(judg[(r["query"][1], r["pos"][1])]["judgment"] == "ENTAILMENT" for r in ent)
  assert all(judg[(r["query"][1], r["neg"][1])]["judgment"] in ("CONTRADICTION", "NEUTRAL") for r in ent)
  rel = [r for r in train if r["task_name"] == "sick_relatedness"]
  assert rel and all(judg[(r["query"][1], r["pos"][1])]["score"] >= notions.HIGH for r in rel)


def test_noinstr_is_the_same_records_without_instructions(built):
  out = built[0]
  a = json.load(open(os.path.join(out, "train_instr.json")))
  b = json.load(open(os.path.join(out, "train_noinstr.json")))
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x["task_name"] == y["task_name"]
    assert all(y[s] == ["", x[s][1]] for s in ("query", "pos", "neg"))


def test_eval_folders_are_local_tasks_with_the_notion_instruction(built):
  from instructor_jax.evaluation import local
  out = built[0]
  for notion, task_type in notions.EVAL_TYPE.items():
    (task,) = local.detect(os.path.join(out, "eval", "test", notion), "test")
    assert task.type == task_type and task.name == notion
    assert task.instructions == {"text": notions.NOTIONS[notion]}
    (dev,) = local.detect(os.path.join(out, "eval", "dev", notion), "dev")
    assert dev.type == task_type
  (sick,) = local.detect(os.path.join(out, "eval", "heldout_sick", "sick-r-heldout"), "test")
  assert sick.type == "STS" and sick.name == "SICK-R-heldout"
  with open(os.path.join(out, "eval", "test", "sick_entailment", "test.csv")) as f:
    assert {row["label"] for row in csv.DictReader(f)} <= {"0", "1"}
