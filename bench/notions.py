"""Conflicting notions of similarity over the same texts: MEDI training records and evaluation folders (issue 24).

    python -m bench.notions --shared ../shared --out /tmp/notions [--seed 0] [--per-notion 1200] [--max-test 600]

The one thing to know first: **every split is by text**. A text (a StereoSet item, a SICK sentence) belongs to
exactly one of train / dev / test, and a record or pair is kept only inside the split of all its texts, so no
held-out text is ever trained on. The derived MEDI set is filtered the same way (its records with a SICK dev/test
text are dropped).

Notions (each its own MEDI ``task_name`` and INSTRUCTOR-style instruction, ``NOTIONS`` below):

- ``stereoset_label`` / ``stereoset_domain`` (super-NI task318-321): the text ``"Target: X | s1 s2"`` has a label
  (stereotype / anti-stereotype / unrelated) and a domain (gender / profession / race / religion). Label records:
  positive = same label, *other* domain; hard negative = same domain, other label. Domain records: the reverse. So
  without instructions the two notions ask for opposite things on the same texts. Split by StereoSet context (the
  target and first sentence shared by an item's three continuations), so near-duplicates stay together.
  Evaluation: Classification (``train.csv`` from training texts, ``test.csv`` held out; mteb's logistic regression).
- ``sick_relatedness`` / ``sick_entailment`` (SICK, all 9,927 pairs): sentences are assigned to splits at random
  (``SICK_SPLIT``); a pair is in a split when both sentences are. Relatedness records: positive = a partner with
  relatedness >= 3.8 (contradictions included: they are often highly related), negative = a partner with
  relatedness <= 2.5 (else a random sentence). Entailment records: positive = an ENTAILMENT partner, negative = a
  CONTRADICTION partner (else a NEUTRAL one). Evaluation: relatedness as STS (``sentence1,sentence2,score``),
  entailment as PairClassification of ENTAILMENT (1) vs CONTRADICTION (0) pairs (``sentence1,sentence2,label``).

Dropped: super-NI task137-140 (detoxifying-lms). The four tasks share all 390 pairs (99 prompts, 575 completions),
but each label is a *preference between two completions*, not a property of one text nor a similarity, and the
only embedding form (rerank the two completions of a prompt) leaves ~30 held-out prompts / ~115 two-candidate
lists, too few to separate configurations; topicality and style also agree on 94% of pairs (toxicity vs
topicality 44%), so only two of the four would conflict. ``detox_agreement`` computes those numbers.

Outputs under ``--out``: ``train_instr.json`` (notions + the filtered derived set, of which ``--max-derived``
records are kept, a uniform sample, so that the notions get most batches at CPU sizes),
``train_noinstr.json`` (the same with every instruction emptied), ``eval/test/<notion>/`` and
``eval/dev/<notion>/`` (local task folders with ``task.json``; ``instructor_jax.eval --data-dir``),
``eval/test/sick-r-heldout/`` (the held-out SICK test pairs as STS with SICK-R's INSTRUCTOR-table instruction), and
``report.json`` (sizes, overlap checks).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
from collections import defaultdict

STEREOSET = {"gender": "task318_stereoset_classification_gender", "profession":
             "task319_stereoset_classification_profession", "race": "task320_stereoset_classification_race",
             "religion": "task321_stereoset_classification_religion"}
DETOX = ("task137_detoxifying-lms_classification_toxicity", "task138_detoxifying-lms_classification_fluency",
         "task139_detoxifying-lms_classification_topicality", "task140_detoxifying-lms_classification_style")
SICK_FILES = ("SICK_train.txt", "SICK_trial.txt", "SICK_test_annotated.txt")
SICK_SPLIT = {"train": 0.55, "dev": 0.15, "test": 0.30}   # sentence-level; pairs kept ~ sum p^2 = 42%
STEREO_SPLIT = {"train": 0.7, "dev": 0.1, "test": 0.2}     # context-level
NOTIONS = {
    "stereoset_label": "Represent the statement for classifying whether it is a stereotype, an anti-stereotype or "
                       "unrelated;",
    "stereoset_domain": "Represent the statement for classifying which social group it is about (gender, "
                        "profession, race or religion);",
    "sick_relatedness": "Represent the sentence for retrieving sentences about related content;",
    "sick_entailment": "Represent the sentence for retrieving sentences that it logically entails;",
}
EVAL_TYPE = {"stereoset_label": "Classification", "stereoset_domain": "Classification",
             "sick_relatedness": "STS", "sick_entailment": "PairClassification"}
HIGH, LOW = 3.8, 2.5
SICK_R_INSTRUCTION = "Represent the statement: "   # SICK-R's entry in INSTRUCTOR's table (instructor-base)


def _json(path, obj):
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=1, ensure_ascii=False)
  os.replace(tmp, path)


def _csv(path, header, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)


def _assign(keys, fractions, seed):
  """``{key: split}``: a seeded shuffle of the sorted keys cut at the cumulative fractions."""
  keys = sorted(set(keys))
  random.Random(seed).shuffle(keys)
  out, start = {}, 0
  names = list(fractions)
  for i, name in enumerate(names):
    end = len(keys) if i == len(names) - 1 else start + round(fractions[name] * len(keys))
    out.update((k, name) for k in keys[start:end])
    start = end
  return out


def _definition(task):
  d = task.get("Definition", "")
  return d[0] if isinstance(d, list) else d


# ---------------------------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------------------------
def read_stereoset(super_ni):
  """``[{"text", "label", "domain", "context"}]`` from task318-321; one-line errors name the file and instance."""
  items = []
  for domain, name in STEREOSET.items():
    path = os.path.join(super_ni, name + ".json")
    with open(path, encoding="utf-8") as f:
      task = json.load(f)
    for i, inst in enumerate(task["Instances"]):
      m = re.match(r"\s*Target:\s*(.*?)\s*\n(.*)", inst["input"], re.S)
      if not m or not inst.get("output"):
        raise ValueError(f"{path}: Instances[{i}]: expected 'Target: X \\n sentences' and an output")
      target, body = m.group(1).strip(), " ".join(m.group(2).split())
      first = re.split(r"(?<=[.!?])\s", body, maxsplit=1)[0]
      items.append(dict(text=f"Target: {target} | {body}", label=inst["output"][0].strip().lower(), domain=domain,
                        context=f"{domain}|{target}|{first}"))
  return items


def read_sick(sick_dir):
  """``[{"a", "b", "score", "judgment"}]`` over SICK's three files (all 9,927 pairs)."""
  pairs = []
  for name in SICK_FILES:
    path = os.path.join(sick_dir, name)
    with open(path, encoding="utf-8") as f:
      for line_no, row in enumerate(csv.DictReader(f, delimiter="\t"), start=2):
        try:
          pairs.append(dict(a=row["sentence_A"].strip(), b=row["sentence_B"].strip(),
                            score=float(row["relatedness_score"]), judgment=row["entailment_judgment"].strip()))
        except (KeyError, ValueError, AttributeError) as e:
          raise ValueError(f"{path}:{line_no}: bad SICK row ({e})") from None
  return pairs


def detox_agreement(super_ni):
  """Fraction of shared inputs on which each two of task137-140 give the same answer (why detox is dropped)."""
  labels = {}
  for name in DETOX:
    with open(os.path.join(super_ni, name + ".json"), encoding="utf-8") as f:
      labels[name[:7]] = {i["input"]: i["output"][0] for i in json.load(f)["Instances"]}
  common = set.intersection(*(set(v) for v in labels.values()))
  ks = sorted(labels)
  return dict(shared_inputs=len(common), agreement={f"{a}/{b}": round(sum(labels[a][x] == labels[b][x]
              for x in common) / max(1, len(common)), 3) for i, a in enumerate(ks) for b in ks[i + 1:]})


# ---------------------------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------------------------
def _rec(notion, q, p, n, instr=True):
  i = NOTIONS[notion] if instr else ""
  return {"query": [i, q], "pos": [i, p], "neg": [i, n], "task_name": notion}


def stereoset_records(items, n_per_notion, rng):
  """Label and domain records over the same texts; the hard negative of one notion is the positive of the other."""
  by = defaultdict(list)
  for it in items:
    by[(it["label"], it["domain"])].append(it["text"])
  labels = sorted({it["label"] for it in items})
  domains = sorted({it["domain"] for it in items})
  out = {"stereoset_label": [], "stereoset_domain": []}
  anchors = list(items)
  rng.shuffle(anchors)
  for notion in out:
    for it in anchors:
      if len(out[notion]) >= n_per_notion:
        break
      other_d = [d for d in domains if d != it["domain"] and by[(it["label"], d)]]
      other_l = [l for l in labels if l != it["label"] and by[(l, it["domain"])]]
      same_dom = [t for t in by[(it["label"], it["domain"])] if t != it["text"]]
      if not other_d or not other_l or not same_dom:
        continue
      same_label_other_domain = rng.choice(by[(it["label"], rng.choice(other_d))])
      same_domain_other_label = rng.choice(by[(rng.choice(other_l), it["domain"])])
      if notion == "stereoset_label":
        out[notion].append(_rec(notion, it["text"], same_label_other_domain, same_domain_other_label))
      else:
        out[notion].append(_rec(notion, it["text"], same_domain_other_label, same_label_other_domain))
  return out


def sick_records(pairs, n_per_notion, rng):
  """Relatedness and entailment records from one split's pairs (both directions of each pair)."""
  partners = defaultdict(list)   # sentence -> [(other, score, judgment)]
  for p in pairs:
    partners[p["a"]].append((p["b"], p["score"], p["judgment"]))
    partners[p["b"]].append((p["a"], p["score"], p["judgment"]))
  sentences = sorted(partners)
  rel, ent = [], []
  for s in sentences:
    ps = partners[s]
    high = [o for o, sc, _ in ps if sc >= HIGH]
    low = [o for o, sc, _ in ps if sc <= LOW]
    for o in high:
      rel.append(_rec("sick_relatedness", s, o, rng.choice(low) if low else rng.choice(sentences)))
    entail = [o for o, _, j in ps if j == "ENTAILMENT"]
    contra = [o for o, _, j in ps if j == "CONTRADICTION"] or [o for o, _, j in ps if j == "NEUTRAL"]
    for o in entail:
      if contra:
        ent.append(_rec("sick_entailment", s, o, rng.choice(contra)))
  # Conflict first: relatedness records whose positive is a contradiction, then the rest.
  rng.shuffle(rel)
  rng.shuffle(ent)
  return {"sick_relatedness": rel[:n_per_notion], "sick_entailment": ent[:n_per_notion]}


def strip_instructions(records):
  return [dict(r, **{s: ["", r[s][1]] for s in ("query", "pos", "neg")}) for r in records]


# ---------------------------------------------------------------------------------------------------------------
# Evaluation folders
# ---------------------------------------------------------------------------------------------------------------
def _task_json(folder, name, task_type, instruction):
  _json(os.path.join(folder, "task.json"), {"name": name, "type": task_type, "instruction": instruction})


def _cap(rows, n, rng):
  rows = list(rows)
  if n and len(rows) > n:
    rows = rng.sample(rows, n)
  return rows


def write_eval(out, stereo_split, sick_split, max_test, max_clf_train, seed):
  """Task folders per notion under ``out/eval/{dev,test}`` (the dev folders are for choosing settings)."""
  sizes = {}
  for split in ("dev", "test"):
    rng = random.Random(f"{seed}-{split}")
    base = os.path.join(out, "eval", split)
    clf_train = stereo_split["train"]
    for notion, key in (("stereoset_label", "label"), ("stereoset_domain", "domain")):
      folder = os.path.join(base, notion)
      train = _cap([(it["text"], it[key]) for it in clf_train], max_clf_train, rng)
      test = _cap([(it["text"], it[key]) for it in stereo_split[split]], max_test, rng)
      _csv(os.path.join(folder, "train.csv"), ("text", "label"), train)
      _csv(os.path.join(folder, split + ".csv"), ("text", "label"), test)
      _task_json(folder, notion, "Classification", NOTIONS[notion])
      sizes[f"{split}/{notion}"] = dict(test=len(test), classifier_train=len(train))
    sts = _cap([(p["a"], p["b"], p["score"]) for p in sick_split[split]], max_test, rng)
    folder = os.path.join(base, "sick_relatedness")
    _csv(os.path.join(folder, split + ".csv"), ("sentence1", "sentence2", "score"), sts)
    _task_json(folder, "sick_relatedness", "STS", NOTIONS["sick_relatedness"])
    sizes[f"{split}/sick_relatedness"] = dict(test=len(sts))
    pc = _cap([(p["a"], p["b"], int(p["judgment"] == "ENTAILMENT")) for p in sick_split[split]
               if p["judgment"] in ("ENTAILMENT", "CONTRADICTION")], max_test, rng)
    folder = os.path.join(base, "sick_entailment")
    _csv(os.path.join(folder, split + ".csv"), ("sentence1", "sentence2", "label"), pc)
    _task_json(folder, "sick_entailment", "PairClassification", NOTIONS["sick_entailment"])
    sizes[f"{split}/sick_entailment"] = dict(test=len(pc), positives=sum(r[2] for r in pc))
    if split == "test":  # the standard SICK-R, leak-free: held-out test pairs, SICK-R's generic STS instruction
      folder = os.path.join(out, "eval", "heldout_sick", "sick-r-heldout")
      _csv(os.path.join(folder, "test.csv"), ("sentence1", "sentence2", "score"), sts)
      _json(os.path.join(folder, "task.json"), {"name": "SICK-R-heldout", "type": "STS",
                                                "instruction": SICK_R_INSTRUCTION})
  return sizes


# ---------------------------------------------------------------------------------------------------------------
# The build
# ---------------------------------------------------------------------------------------------------------------
def build(out, *, stereoset_items, sick_pairs, derived=(), per_notion=1200, max_test=600, max_clf_train=1000,
          max_derived=0, seed=0):
  """Writes the training files, evaluation folders and ``report.json`` under ``out``; returns the report."""
  rng = random.Random(seed)
  ctx_split = _assign([it["context"] for it in stereoset_items], STEREO_SPLIT, seed)
  stereo_split = {s: [it for it in stereoset_items if ctx_split[it["context"]] == s] for s in STEREO_SPLIT}
  sent_split = _assign([s for p in sick_pairs for s in (p["a"], p["b"])], SICK_SPLIT, seed)
  sick_split = {s: [p for p in sick_pairs if sent_split[p["a"]] == s == sent_split[p["b"]]] for s in SICK_SPLIT}
  records = {}
  records.update(stereoset_records(stereo_split["train"], per_notion, rng))
  records.update(sick_records(sick_split["train"], per_notion, rng))
  held = {it["text"] for s in ("dev", "test") for it in stereo_split[s]}
  held |= {x for s in ("dev", "test") for p in sick_split[s] for x in (p["a"], p["b"])}
  clean = [r for r in derived if not any(r[s][1] in held for s in ("query", "pos", "neg"))]
  kept = _cap(clean, max_derived, rng)   # a uniform sample keeps the derived tasks' proportions
  train = [r for n in NOTIONS for r in records[n]] + kept
  rng.shuffle(train)
  trained_texts = {r[s][1] for r in train for s in ("query", "pos", "neg")}
  leaks = len(trained_texts & held)
  if leaks:
    raise AssertionError(f"{leaks} held-out texts in the training records")
  _json(os.path.join(out, "train_instr.json"), train)
  _json(os.path.join(out, "train_noinstr.json"), strip_instructions(train))
  sizes = write_eval(out, stereo_split, sick_split, max_test, max_clf_train, seed)
  report = dict(seed=seed, per_notion=per_notion, max_test=max_test, instructions=NOTIONS,
                records={n: len(records[n]) for n in NOTIONS}, derived_kept=len(kept),
                derived_dropped=len(derived) - len(clean), derived_sampled_out=len(clean) - len(kept),
                train_records=len(train),
                stereoset_texts={s: len(v) for s, v in stereo_split.items()},
                sick_pairs={s: len(v) for s, v in sick_split.items()}, sick_pairs_total=len(sick_pairs),
                sick_pairs_dropped_across_splits=len(sick_pairs) - sum(len(v) for v in sick_split.values()),
                eval=sizes, heldout_texts_in_training=leaks)
  _json(os.path.join(out, "report.json"), report)
  return report


def build_from_shared(shared, out, **kw):
  data = os.path.join(shared, "data")
  with open(os.path.join(data, "medi", "medi_format_derived.json"), encoding="utf-8") as f:
    derived = json.load(f)
  report = build(out, stereoset_items=read_stereoset(os.path.join(data, "super-ni")),
                 sick_pairs=read_sick(os.path.join(data, "eval", "sick")), derived=derived, **kw)
  report["detox"] = detox_agreement(os.path.join(data, "super-ni"))
  _json(os.path.join(out, "report.json"), report)
  return report


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--shared", default="../shared")
  ap.add_argument("--out", required=True)
  ap.add_argument("--seed", type=int, default=0, help="the data split and record sampling (not the training seed)")
  ap.add_argument("--per-notion", type=int, default=1200)
  ap.add_argument("--max-test", type=int, default=600, help="evaluation examples per notion and split (0 = all)")
  ap.add_argument("--max-derived", type=int, default=1000, help="derived MEDI records kept (a uniform sample; 0 = all)")
  args = ap.parse_args(argv)
  report = build_from_shared(args.shared, args.out, per_notion=args.per_notion, max_test=args.max_test,
                             max_derived=args.max_derived, seed=args.seed)
  print(json.dumps({k: report[k] for k in ("records", "derived_kept", "train_records", "stereoset_texts",
                                           "sick_pairs", "detox")}, indent=1))


if __name__ == "__main__":
  main()
