#!/usr/bin/env python3
"""Reference values for gclip's ranking metrics (tests/fixtures/ranking/).

Run by hand with the reference venv (pip install pytrec-eval-terrier: the same pytrec_eval
module as a prebuilt wheel):

    /path/to/venv/bin/python tools/gen_ranking_fixtures.py

Writes qrels.txt (TREC qrels), run.json (pytrec_eval/BEIR dict, which can hold empty result
lists), run.txt (the same run as a TREC run file, queries with empty lists left out) and
expected.json. The metrics are computed the way GCL's evaluation computes them
(marqo-ai/GCL evals/eval_gs_v1.py): nDCG@k, MAP@k, Recall@k, P@k by pytrec_eval (as BEIR's
EvaluateRetrieval.evaluate, averaged over the queries pytrec_eval returns, without BEIR's
rounding); MRR@k as BEIR's custom_metrics.mrr (averaged over all qrels queries); ERR and RBP
as GCL's own functions (averaged over all qrels queries). The data is random with many ties
(scores on a coarse grid), duplicate relevance grades, queries with no relevant document,
queries with an empty result list, a query absent from the run and a run query absent from
the qrels.
"""

import json
import random
from pathlib import Path

import pytrec_eval

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "ranking"
KS = [1, 2, 3, 5, 10, 20, 100]
RBP_PS = [0.7, 0.8, 0.9]


def gcl_err(qrels, results):
    err, p_stop = 0.0, 1.0
    ranked = sorted(results.items(), key=lambda x: x[1], reverse=True)
    max_rel = max(qrels.values())
    for rank, (doc, _) in enumerate(ranked, start=1):
        rel = qrels.get(doc, 0)
        prob = (2 ** rel - 1) / (2 ** max_rel)
        err += p_stop * prob / rank
        p_stop *= 1 - prob
    return err


def gcl_rbp(qrels, results, p):
    ranked = sorted(results.items(), key=lambda x: x[1], reverse=True)
    max_rel = max(qrels.values())
    total = 0.0
    for rank, (doc, _) in enumerate(ranked, start=1):
        total += (qrels.get(doc, 0) / max_rel) * p ** (rank - 1)
    return total * (1 - p)


def beir_mrr(qrels, results, k):
    total = 0.0
    for q in qrels:
        relevant = {d for d, r in qrels[q].items() if r > 0}
        hits = sorted(results.get(q, {}).items(), key=lambda x: x[1], reverse=True)[:k]
        for rank, (d, _) in enumerate(hits):
            if d in relevant:
                total += 1.0 / (rank + 1)
                break
    return total / len(qrels)


def main():
    rng = random.Random(20240611)
    docs = [f"d{i:03d}" for i in range(60)]
    qrels, run = {}, {}
    for qi in range(25):
        q = f"q{qi:02d}"
        judged = rng.sample(docs, rng.randint(1, 15))
        # Grades 0..100 with repeats; some queries have only zero grades.
        qrels[q] = {d: (0 if qi % 9 == 4 else rng.choice([0, 1, 1, 3, 50, 99, 100])) for d in judged}
        if qi % 9 == 4:
            qrels[q][judged[0]] = 0
        if qi == 7:
            continue  # judged but never retrieved: absent from the run
        if qi == 11:
            run[q] = {}  # retrieved nothing
            continue
        retrieved = rng.sample(docs, rng.randint(1, 40))
        # Scores on a coarse grid: many ties.
        run[q] = {d: rng.choice([0.1, 0.25, 0.5, 0.5, 0.75, 0.9]) for d in retrieved}
    run["q99"] = {"d001": 1.0}  # not judged
    for q in qrels:  # make sure some judged documents are retrieved
        if q in run and run[q]:
            for d in list(qrels[q])[:2]:
                run[q].setdefault(d, 0.5)

    measures = {f"ndcg_cut.{','.join(map(str, KS))}", f"map_cut.{','.join(map(str, KS))}",
                f"recall.{','.join(map(str, KS))}", f"P.{','.join(map(str, KS))}"}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    expected = {}
    for k in KS:
        for ours, theirs in [("ndcg", "ndcg_cut"), ("map", "map_cut"), ("recall", "recall"), ("p", "P")]:
            vals = [per_query[q][f"{theirs}_{k}"] for q in per_query]
            expected[f"{ours}@{k}"] = sum(vals) / len(vals)
        expected[f"mrr@{k}"] = beir_mrr(qrels, run, k)
    expected["err"] = sum(gcl_err(qrels[q], run.get(q, {})) for q in qrels) / len(qrels)
    for p in RBP_PS:
        vals = [gcl_rbp(qrels[q], run.get(q, {}), p) if max(qrels[q].values()) > 0 else 0.0 for q in qrels]
        expected[f"rbp@{p}"] = sum(vals) / len(qrels)
    expected["_evaluated_queries"] = len(per_query)
    expected["_per_query_ndcg@10"] = {q: per_query[q]["ndcg_cut_10"] for q in sorted(per_query)}

    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "qrels.txt", "w") as f:
        for q in qrels:
            for d, r in qrels[q].items():
                f.write(f"{q} 0 {d} {r}\n")
    with open(OUT / "run.json", "w") as f:
        json.dump(run, f, indent=0)
    with open(OUT / "run.txt", "w") as f:
        for q, res in run.items():
            for rank, (d, s) in enumerate(res.items(), start=1):
                f.write(f"{q} Q0 {d} {rank} {s} fixture\n")
    with open(OUT / "expected.json", "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
    print(json.dumps({k: v for k, v in expected.items() if not k.startswith("_")}, indent=1))


if __name__ == "__main__":
    main()
