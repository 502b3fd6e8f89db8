"""Gradient variance of the proposal on the speech model, every estimator side by side.

For one fixed batch of utterances and fixed weights (at initialisation, or from a checkpoint), the
training loss is differentiated ``--draws`` times with fresh alignments; the rows report the trace
of the covariance of the proposal's gradient (q's parameters for the posterior proposal; p's
emit-decision parameters, its decision cell and emit head, for the prior proposal, where q = p),
and its ratio to the ``vimco`` row and to the REINFORCE row of the same setting, with bootstrap
95% intervals (draws resampled with replacement, each row independently). Rows:

* ``reinforce (prior)``: Luo et al., the prior as proposal, learned per-step baseline, K = 1;
* ``nvil``: posterior proposal, learned per-step baseline, running centre and scale, K = 1;
* ``vimco`` and ``vimco-seq`` with each ``align`` (``time``, ``progress``, ``progress-time``,
  ``fitted``, the default) at each K of ``--samples``; with ``--future-control``, each lookahead
  ``vimco-seq`` row also with the future control variate; ``--rows`` names the multi-sample rows
  directly instead (estimator specs, e.g. ``vimco-seq:values=model,weight_control=true``).

Estimators with running state (NVIL's statistics, vimco-seq's fitted coefficients) are first run
for ``--warmup`` draws in training mode on the same batch, then frozen (eval mode) while measured.
Writes a markdown table (``--out``, default ``benchmarks/results/speech_variance.md``) and JSON::

    python benchmarks/speech_variance.py --data-dir exp/timit/data                     # at initialisation
    python benchmarks/speech_variance.py --data-dir exp/timit/data --checkpoint RUN/checkpoint.pt
    python benchmarks/speech_variance.py --data-dir exp/timit/data -- --posterior-aligner false
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"


def proposal_parameters(model) -> list[torch.nn.Parameter]:
    if model.proposal == "posterior":
        return list(model.posterior.parameters())
    recurrence = list(model.gate_hidden.parameters()) if hasattr(model, "gate_hidden") else []  # decision_recurrence
    return [*recurrence, *model.gate_decision.parameters(), *model.emit_head.parameters()]


def gradient_draws(model, estimator, batch, num_samples: int, draws: int, warmup: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[draws, P]`` flattened proposal gradients of the whole training loss, and of its
    score-function part alone (``-mean_b sum_k sum_t A_t^k grad log q_t^k``, the part a learning
    signal's baseline changes; the rest is the bound's pathwise gradient and the model's other losses)."""
    from hardalign.estimators._surrogate import score_function_surrogate
    from hardalign.objective import training_terms

    params = proposal_parameters(model)
    rows, score_rows = [], []

    def flat(grads) -> torch.Tensor:
        return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)]).double()

    # the estimator's output (its learning signals) as training_terms computes it, without a second call
    last = {}
    hook = estimator.register_forward_hook(lambda module, inputs, output: last.update(result=output))
    try:
        for i in range(warmup + draws):
            estimator.train(i < warmup)
            output = model(batch, num_samples=num_samples, step=0)
            loss = training_terms(output, estimator)["loss"]
            if i < warmup:
                continue
            signals = last["result"].signals
            trajectory = output.trajectory
            score = -score_function_surrogate(signals, trajectory.log_q, trajectory.mask).sum(0).mean()
            # only the proposal's gradient: autograd skips what it does not need (p's encoder backward)
            rows.append(flat(torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)))
            score_rows.append(flat(torch.autograd.grad(score, params, allow_unused=True)))
    finally:
        hook.remove()
    return torch.stack(rows), torch.stack(score_rows)


def spec_row(spec: str, num_samples: int) -> tuple:
    """``"vimco-seq:values=model,weight_control=true"`` -> a row ``(label, proposal, name, options, K)``."""
    from hardalign.train.config import _parse_options

    name, _, text = spec.strip().partition(":")
    options = _parse_options(text)
    label = name + (" (" + ", ".join(f"{key}={value}" for key, value in options.items()) + ")" if options else "")
    return label, "posterior", name, options, num_samples


def trace(draws: torch.Tensor) -> float:
    return float(draws.var(dim=0).sum())


def bootstrap_traces(draws: torch.Tensor, resamples: int, generator: torch.Generator) -> torch.Tensor:
    n = draws.shape[0]
    values = []
    for _ in range(resamples):
        index = torch.randint(0, n, (n,), generator=generator)
        values.append(trace(draws[index]))
    return torch.tensor(values, dtype=torch.float64)


def interval(values: torch.Tensor) -> tuple[float, float]:
    low, high = torch.quantile(values, torch.tensor([0.025, 0.975], dtype=values.dtype)).tolist()
    return low, high


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="exp/timit/data")
    parser.add_argument("--config", default=str(REPO / "recipes/timit/conf/vimco-seq.yaml"))
    parser.add_argument("--checkpoint", default=None, help="weights to measure at (default: initialisation, seeded)")
    parser.add_argument("--utterances", type=int, default=16, help="the fixed batch")
    parser.add_argument("--samples", default="4,16", help="K values for the multi-sample rows")
    parser.add_argument("--aligns", default="time,progress,progress-time,fitted", help="vimco-seq align options")
    parser.add_argument("--weight-control", action=argparse.BooleanOptionalAction, default=True, help="also the rows with weight_control (the control variate for the proposal's share of the pathwise gradient)")
    parser.add_argument(
        "--lookahead", default="on", choices=("on", "off", "both"),
        help="vimco-seq rows with the lookahead stand-in (the default), without it, or both",
    )
    parser.add_argument(
        "--future-control", action="store_true",
        help="also each vimco-seq row with future_control (the later steps' innovations subtracted; needs the lookahead)",
    )
    parser.add_argument(
        "--only-weight-control", action="store_true",
        help="vimco-seq rows with weight control only (and no 'vimco (weight control)' row); the vimco reference row stays plain",
    )
    parser.add_argument(
        "--rows", default=None,
        help="the multi-sample rows, instead of the flags above: estimator specs separated by ';', each NAME or "
        "NAME:key=value,key=value (the --estimator-options syntax), measured at each K of --samples, e.g. "
        "'vimco;vimco-seq:weight_control=true;vimco-seq:values=model,weight_control=true,future_control=true'",
    )
    parser.add_argument("--nvil", action=argparse.BooleanOptionalAction, default=True, help="the nvil row")
    parser.add_argument("--draws", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=16)
    parser.add_argument("--resamples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", default="", help="a name for this setting in the table")
    parser.add_argument("--out", default=str(RESULTS / "speech_variance.md"))
    parser.add_argument("--append", action="store_true", help="add to --out instead of overwriting it")
    parser.add_argument("overrides", nargs="*", help="config overrides after --, e.g. -- --posterior-aligner false")
    args = parser.parse_args(argv)

    from hardalign.data import collate_speech
    from hardalign.estimators import build_estimator
    from hardalign.train.config import resolve_config
    from hardalign.train.tasks import build_task

    torch.set_num_threads(1)
    state = None
    if args.checkpoint:
        from hardalign.train.checkpoint import load_checkpoint

        state = load_checkpoint(args.checkpoint)
    base = ["--data-dir", args.data_dir, "--model", "hardalign", *args.overrides]

    def build(proposal: str):
        config = resolve_config(args.config, [*base, "--proposal", proposal])
        task = build_task("timit", config.task, config.train, device=torch.device("cpu"))
        torch.manual_seed(args.seed)  # the same initial weights for every row
        model = task.build_model()
        if state is not None:
            # the prior model's baseline network reads p's state (another width): keep it fresh there
            weights = {k: v for k, v in state["model"].items() if proposal == "posterior" or not k.startswith("baseline_net.")}
            model.load_state_dict(weights, strict=proposal == "posterior")
        model.train()
        model.budget_spent = 1.0  # past any ctc_warmup stage: the bound's gradient is what is measured
        dataset = task.train_set
        batch = collate_speech([dataset[i] for i in range(min(args.utterances, len(dataset)))])
        return model, batch

    rows = [("reinforce (prior, learned baseline)", "prior", "reinforce", {"baseline": "learned"}, 1)]
    if args.nvil:
        rows.append(("nvil", "posterior", "nvil", {}, 1))
    for k in (int(v) for v in args.samples.split(",")):
        if args.rows is not None:
            rows.extend(spec_row(spec, k) for spec in args.rows.split(";") if spec.strip())
            continue
        rows.append(("vimco", "posterior", "vimco", {}, k))
        if args.weight_control and not args.only_weight_control:
            rows.append(("vimco (weight control)", "posterior", "vimco", {"weight_control": True}, k))
        lookaheads = {"on": (True,), "off": (False,), "both": (True, False)}[args.lookahead]
        for align in args.aligns.split(","):
            for lookahead in lookaheads:
                label = f"align={align}" + ("" if lookahead else ", no lookahead")
                controls = [("", {})] * (not args.only_weight_control) + [(", weight control", {"weight_control": True})] * (args.weight_control or args.only_weight_control)
                for suffix, options in controls:
                    # the stand-ins these flags name: the others' futures, controls only where the label says
                    options = {"align": align, "lookahead": lookahead, "values": "others", "weight_control": False, "future_control": False, **options}
                    rows.append((f"vimco-seq ({label}{suffix})", "posterior", "vimco-seq", options, k))
                    if args.future_control and lookahead:
                        rows.append((f"vimco-seq ({label}{suffix}, future control)", "posterior", "vimco-seq", {**options, "future_control": True}, k))
    generator = torch.Generator().manual_seed(args.seed + 1)
    results = []
    models = {}
    for name, proposal, estimator_name, options, k in rows:
        if proposal not in models:
            models[proposal] = build(proposal)
        model, batch = models[proposal]
        torch.manual_seed(args.seed + 17)
        started = time.perf_counter()
        draws, score_draws = gradient_draws(model, build_estimator(estimator_name, **options), batch, k, args.draws, args.warmup)
        boot = bootstrap_traces(draws, args.resamples, generator)
        results.append({
            "row": name, "K": k, "trace": trace(draws), "boot": boot, "seconds": time.perf_counter() - started,
            "score_trace": trace(score_draws), "rest_trace": trace(draws - score_draws),
        })
        print(f"{name:40s} K={k:2d} trace {results[-1]['trace']:.4g} ({results[-1]['seconds']:.0f} s)", flush=True)

    def ratio(row, reference) -> str:
        value = row["trace"] / reference["trace"]
        low, high = interval(row["boot"] / reference["boot"])
        return f"{value:.3g} [{low:.3g}, {high:.3g}]"

    reinforce = results[0]
    setting = args.label or ("checkpoint " + args.checkpoint if args.checkpoint else "initialisation")
    overrides = " ".join(args.overrides) or "recipe defaults"
    lines = [
        f"### {setting} ({overrides})",
        "",
        f"{args.utterances} utterances, {args.draws} draws per row after {args.warmup} warm-up draws, "
        f"bootstrap 95% intervals from {args.resamples} resamples; one CPU thread.",
        "",
        "| estimator | K | trace of covariance | x vimco (same K) | x reinforce (prior) | score-function part | rest | rest / vimco's total |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results:
        vimco = next((r for r in results if r["row"] == "vimco" and r["K"] == row["K"]), None)
        lines.append(
            f"| {row['row']} | {row['K']} | {row['trace']:.4g} | {ratio(row, vimco) if vimco else '-'} | {ratio(row, reinforce)} "
            f"| {row['score_trace']:.4g} | {row['rest_trace']:.4g} | {format(row['rest_trace'] / vimco['trace'], '.3g') if vimco else '-'} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a" if args.append else "w", encoding="utf-8") as handle:
        handle.write(table + "\n")
    record = {"setting": setting, "overrides": args.overrides, "rows": [{k: v for k, v in r.items() if k != "boot"} for r in results]}
    with open(out.with_suffix(".jsonl"), "a" if args.append else "w", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
