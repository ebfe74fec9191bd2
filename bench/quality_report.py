"""The conflicting-notions study's records and report (issue 24): ``python -m bench.quality --report RESULTS``.

The one thing to know first: every table is computed from the raw records alone (``RESULTS/<config>[@variant]-s<seed>
.json``, written by ``bench/quality.py`` as each run finishes): mean ± sample std over seeds, means over notions /
tasks taken per seed first, so no number is typed by hand.
"""
from __future__ import annotations

import glob
import json
import os
import statistics

from bench import REPO

CONFIGS = ("pretrained", "ft_instr", "ft_noinstr")
NOTION_TASKS = ("stereoset_label", "stereoset_domain", "sick_relatedness", "sick_entailment")
HELDOUT_NAMES = ("STSBenchmark", "SICK-R-heldout", "Banking77Classification", "SciFact", "TwitterPIT2015",
                 "AGNewsTitlesClustering", "WikiQAReranking")


def run_name(config, seed, variant=""):
  return f"{config}{'@' + variant if variant else ''}-s{seed}"



def _key(r) -> str:
  return r["config"] + ("@" + r["variant"] if r.get("variant") else "")


def load_records(folder) -> list:
  recs = []
  for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
    with open(path) as f:
      r = json.load(f)
    if "config" in r and "seed" in r:
      recs.append(r)
  return recs


def _ms(vals):
  vals = [v for v in vals if v is not None]
  if not vals:
    return None, None, 0
  return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0), len(vals)


def _fmt(m, s, n=None):
  return "-" if m is None else f"{100 * m:.2f} ± {100 * s:.2f}" + (f" (n={n})" if n is not None else "")


def summarize(records) -> dict:
  """``{key: {"seeds", "notions": {task: (mean, std, n)}, "notion_mean": ..., "heldout": ..., "heldout_mean": ...}}``
  with key ``config[@variant]``; means over notions / tasks are taken per seed, then over seeds."""
  groups = {}
  for r in records:
    groups.setdefault(_key(r), []).append(r)
  out = {}
  for key, rs in groups.items():
    g = dict(seeds=sorted(r["seed"] for r in rs), n=len(rs))
    for part, names in (("notions", NOTION_TASKS), ("heldout", HELDOUT_NAMES)):
      have = [r for r in rs if r.get(part)]
      g[part] = {t: _ms([r[part].get(t) for r in have]) for t in names}
      per_seed = [statistics.mean([r[part][t] for t in names]) for r in have if all(t in r[part] for t in names)]
      g[part + "_mean"] = _ms(per_seed)
    g["train_s"] = _ms([r.get("train_s") for r in rs])
    g["eval_s"] = _ms([(r.get("eval_notions_s") or 0) + (r.get("eval_heldout_s") or 0) for r in rs])
    out[key] = g
  return out


def goal(summary, a="ft_instr", b="ft_noinstr", c="pretrained") -> dict:
  """Is ``a``'s mean over notions above ``b``'s by > 2 std of the seed spread (the larger std of the two) and above
  ``c``'s?"""
  if a not in summary or b not in summary:
    return {}
  (ma, sa, _), (mb, sb, _) = summary[a]["notions_mean"], summary[b]["notions_mean"]
  if ma is None or mb is None:
    return {}
  spread = max(sa, sb)
  res = dict(gap=ma - mb, spread=spread, gap_in_std=(ma - mb) / spread if spread else float("inf"),
             beats_noinstr=(ma - mb) > 2 * spread)
  if c in summary and summary[c]["notions_mean"][0] is not None:
    res["gap_pretrained"] = ma - summary[c]["notions_mean"][0]
    res["beats_pretrained"] = res["gap_pretrained"] > 0
  return res


def _notions_table(s, keys) -> list:
  """Markdown rows: per configuration its seeds, each notion's mean ± std, and the mean over notions."""
  lines = ["| configuration | seeds | " + " | ".join(NOTION_TASKS) + " | mean over notions |",
           "|---|---|" + "---|" * (len(NOTION_TASKS) + 1)]
  for k in keys:
    g = s[k]
    lines.append(f"| `{k}` | {','.join(map(str, g['seeds']))} | " + " | ".join(_fmt(*g["notions"][t][:2])
                 for t in NOTION_TASKS) + f" | **{_fmt(*g['notions_mean'][:2])}** |")
  return lines


def report(folder, ablation=None) -> str:
  """The tables of QUALITY.md: the configurations of ``folder`` (>= 3 seeds each), then the ablation runs of the
  ``ablation`` folder (kept apart: an ablation may have fewer seeds) beside them."""
  records = load_records(folder) + (load_records(ablation) if ablation else [])
  s = summarize(records)
  order = [k for k in CONFIGS if k in s] + sorted(k for k in s if k not in CONFIGS)
  variants = [k for k in order if "@" in k]
  where = f"`{os.path.relpath(folder, REPO)}`" + (f" and `{os.path.relpath(ablation, REPO)}` (the ablation)"
                                                   if ablation else "")
  lines = [f"Records: {len(records)} in {where}; scores x 100, mean ± sample std over seeds (n = seeds).", "",
           "### Conflicting notions (held-out test texts, each with its notion's instruction; `ft_noinstr`: none)",
           ""] + _notions_table(s, [k for k in order if k not in variants])
  gl = goal(s)
  if gl:
    lines += ["", f"ft_instr - ft_noinstr (mean over notions): {100 * gl['gap']:+.2f} points = "
              f"{gl['gap_in_std']:.1f} x the larger seed std ({100 * gl['spread']:.2f}); > 2 std: "
              f"**{'yes' if gl['beats_noinstr'] else 'no'}**."
              + (f" ft_instr - pretrained: {100 * gl['gap_pretrained']:+.2f} points "
                 f"(**{'beats' if gl['beats_pretrained'] else 'does not beat'}** pretrained)."
                 if "gap_pretrained" in gl else "")]
  if variants:
    lines += ["", "### Ablation (notions only; the same test texts; its seeds are listed)", ""]
    lines += _notions_table(s, variants) + [""]
  for k in variants:
    if not k.startswith("ft_instr@"):
      continue
    twin = "ft_noinstr@" + k.split("@", 1)[1]
    other = twin if twin in s else "ft_noinstr"
    gk = goal(s, k, other)
    if gk:
      lines.append(f"Ablation `{k}` (n={s[k]['n']}) - `{other}` (n={s[other]['n']}): {100 * gk['gap']:+.2f} points"
                   + (f" = {gk['gap_in_std']:.1f} x the larger seed std ({100 * gk['spread']:.2f})"
                      if other == twin and min(s[k]['n'], s[other]['n']) > 1 else "")
                   + ("" if other == twin else " (not like for like: the ablation's ft_noinstr twin is missing)")
                   + ".")
  lines += ["", "Per run (the trade between notions shows seed by seed):", "",
            "| run | " + " | ".join(NOTION_TASKS) + " | mean |", "|---|" + "---|" * (len(NOTION_TASKS) + 1)]
  for r in sorted(records, key=lambda r: (order.index(_key(r)), r["seed"])):
    vals = [r["notions"].get(t) for t in NOTION_TASKS]
    lines.append(f"| `{run_name(r['config'], r['seed'], r.get('variant', ''))}` | "
                 + " | ".join("-" if v is None else f"{100 * v:.2f}" for v in vals)
                 + f" | {100 * statistics.mean(vals):.2f} |" if None not in vals else "")
  lines += ["", "### Standard held-out tasks (reported separately; `ft_noinstr` without instructions)", "",
            "| configuration | " + " | ".join(HELDOUT_NAMES) + " | average |",
            "|---|" + "---|" * (len(HELDOUT_NAMES) + 1)]
  for k in order:
    g = s[k]
    if g["heldout_mean"][0] is None:
      continue
    lines.append(f"| `{k}` | " + " | ".join(_fmt(*g["heldout"][t][:2]) for t in HELDOUT_NAMES)
                 + f" | **{_fmt(*g['heldout_mean'][:2])}** |")
  lines += ["", "### Timings (seconds per run, mean ± std; 2 CPU cores shared with other engineers' jobs; runs with "
            "--skip-heldout count the notions' evaluation only)", "",
            "| configuration | train (whole trainer process) | evaluation (notions + held-out) |", "|---|---|---|"]
  for k in order:
    g = s[k]
    lines.append(f"| `{k}` | {g['train_s'][0]:.0f} ± {g['train_s'][1]:.0f} | {g['eval_s'][0]:.0f} ± "
                 f"{g['eval_s'][1]:.0f} |")
  curves = [r for r in records if r.get("curve")]
  if curves:
    lines += ["", "### Learning curves (dev splits, evaluated during training; mean over notions and per notion)"]
    for r in sorted(curves, key=lambda r: (r["config"], r.get("variant", ""))):
      lines += ["", f"`{run_name(r['config'], r['seed'], r.get('variant', ''))}`:", "",
                "| step | " + " | ".join(NOTION_TASKS) + " | mean |", "|---|" + "---|" * (len(NOTION_TASKS) + 1)]
      start = os.path.join(folder, "curve_start.json")
      points = list(r["curve"])
      if os.path.exists(start):
        with open(start) as f:
          s0 = json.load(f).get(r["config"])
        if s0:
          points = [dict(step=0, **s0)] + points
      for p in points:
        vals = [p.get(t) for t in NOTION_TASKS]
        mean = statistics.mean(vals) if all(v is not None for v in vals) else None
        lines.append(f"| {p['step']} | " + " | ".join("-" if v is None else f"{100 * v:.2f}" for v in vals)
                     + f" | {'-' if mean is None else f'{100 * mean:.2f}'} |")
  return "\n".join(lines)
