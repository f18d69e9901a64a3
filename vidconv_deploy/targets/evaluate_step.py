"""The accuracy step: score the bundle being built on ``--eval``'s test split, as ``vidconv-eval`` would.

``vidconv-eval`` reads a bundle through its manifest, so a provisional manifest is written into the
staging folder first; the final one replaces it, and a failure discards the whole staging folder.
"""

from __future__ import annotations

from vidconv_deploy.targets.context import ExportContext, StepRun
from vidconv_deploy.targets.steps import step


@step("evaluate", "evaluate")
def step_evaluate(ctx: ExportContext, run: StepRun) -> None:
    if ctx.options.eval is None:
        run.not_run("no --eval dataset given")
        return
    if not ctx.verdict.holds:
        run.not_run(f"a verdict failed ({', '.join(ctx.verdict.failed)}): accuracy of a model that is not what the "
                    f"hardware runs would mislead")
        return
    from vidconv_deploy.evaluate.bundle_scores import evaluate_bundle

    ctx.bundle.finish(**ctx.manifest_fields())
    ctx.fields["accuracy"] = evaluate_bundle(ctx.directory, ctx.options.eval)["orders"]["normal"]
    run.record["videos"] = max((row.get("videos", 0) for row in ctx.fields["accuracy"]), default=0)
